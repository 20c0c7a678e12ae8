"""Download faults against a local server that misbehaves on purpose, safe
extraction, md5 settings, file:// mirrors, and the download stage as a command."""
from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import http.server
import io
import os
import re
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from cnnspec.data.archives import safe_extract
from cnnspec.data.datasets import get_dataset
from cnnspec.data.download import download_dataset, expected_md5s, fetch, file_urls
from cnnspec.errors import DataError
from tests.fakedata import make_cifar10_archive, make_mnist_folder, md5_of, running_server, serve_folder

REPO = Path(__file__).resolve().parent.parent
PAYLOAD = bytes(range(256)) * 400  # 100 KiB
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
FAST = dict(timeout=0.5, attempts=3, backoff=0.01)  # keeps every fault test well under a second


# ---------------------------------------------------------------------------------------
# A server that answers each request with the next fault of its plan, then serves
# PAYLOAD properly (honouring Range requests).

class FaultyServer:
    def __init__(self, plan: list[str], payload: bytes = PAYLOAD):
        self.plan = list(plan)
        self.payload = payload
        self.requests: list[dict] = []  # what each request asked for, and the fault it got
        self.release = threading.Event()  # frees stalled handlers at shutdown

    @contextlib.contextmanager
    def running(self):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fault = owner.plan.pop(0) if owner.plan else "ok"
                owner.requests.append({"range": self.headers.get("Range"), "fault": fault})
                FAULTS[fault](self, owner)

        with running_server(Handler) as base_url:
            try:
                yield f"{base_url}/cifar-10-python.tar.gz"
            finally:
                self.release.set()  # stalled handlers return before the server shuts down


def _send(handler, body: bytes, status=200, length=None, extra=()):
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    for key, value in extra:
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)
    handler.wfile.flush()


def _serve_ok(handler, owner):
    match = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
    if match:
        start = int(match.group(1))
        body = owner.payload[start:]
        _send(handler, body, 206, extra=[("Content-Range", f"bytes {start}-{len(owner.payload) - 1}"
                                                            f"/{len(owner.payload)}")])
    else:
        _send(handler, owner.payload)


def _serve_ok_no_range(handler, owner):
    _send(handler, owner.payload)


def _short_body(handler, owner):
    # Promise the whole file, send a third of it, close cleanly.
    _send(handler, owner.payload[: len(owner.payload) // 3], length=len(owner.payload))
    handler.close_connection = True


def _drop_mid_transfer(handler, owner):
    # Send half the file, then reset the connection (RST, not a clean close).
    _send(handler, owner.payload[: len(owner.payload) // 2], length=len(owner.payload))
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.close_connection = True


def _stall(handler, owner):
    owner.release.wait(10)  # never answer; the client's timeout must fire first


def _drip(handler, owner):
    # Promise the whole file, then send 100 bytes every 0.05 s: never silent long enough
    # for the socket timeout, far too slow to finish.
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(owner.payload)))
    handler.end_headers()
    for start in range(0, len(owner.payload), 100):
        if owner.release.wait(0.05):
            return
        try:
            handler.wfile.write(owner.payload[start:start + 100])
            handler.wfile.flush()
        except OSError:  # the client gave up
            return


def _drip_head(handler, owner):
    # A status line and a header a byte at a time: no read waits long, the head never ends.
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while not owner.release.wait(0.05):
        try:
            handler.wfile.write(b"a")
            handler.wfile.flush()
        except OSError:
            return
    handler.close_connection = True


def _continue_forever(handler, owner):
    while not owner.release.is_set():
        try:
            handler.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 50)
        except OSError:
            return
    handler.close_connection = True


def _redirect(location):
    def redirect(handler, owner):
        _send(handler, b"", 302, extra=[("Location", location)])
    return redirect


FAULTS = {
    "ok": _serve_ok,
    "drip_head": _drip_head,
    "continue_forever": _continue_forever,
    "redirect_to_ftp": _redirect("ftp://127.0.0.1:1/cifar-10-python.tar.gz"),
    "redirect_to_bad_ipv6": _redirect("http://[::1/cifar-10-python.tar.gz"),
    "length_superscript": lambda handler, owner: _send(handler, owner.payload, length="\u00b2"),
    "length_5000_digits": lambda handler, owner: _send(handler, owner.payload, length="9" * 5000),
    "ok_no_range": _serve_ok_no_range,
    "404": lambda handler, owner: handler.send_error(404, "Not Found"),
    "503": lambda handler, owner: handler.send_error(503, "Service Unavailable"),
    "wrong": lambda handler, owner: _send(handler, b"not the archive" * 100),
    "short": _short_body,
    "drop": _drop_mid_transfer,
    "stall": _stall,
    "drip": _drip,
}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_nothing_left(folder: Path):
    assert sorted(p.name for p in folder.iterdir()) == [], "a partial or unverified file was left behind"


def assert_one_line_error(error: DataError, url: str, cause_pattern: str, hint: str):
    message = str(error)
    assert "\n" not in message
    assert url in message
    assert re.search(cause_pattern, message), message
    assert hint in message, message


# ---------------------------------------------------------------------------------------
# Faults that end in a DataError.

@pytest.mark.parametrize("plan, cause, hint", [
    (["404"], r"HTTP 404", "data.url"),
    (["wrong"], r"md5 mismatch: got [0-9a-f]{32}, expected " + PAYLOAD_MD5, "data.md5"),
    (["stall"] * 3, r"no response within 0.5 s \(after 3 attempts\)", "data.url"),
    (["short"] * 3, r"closed the connection after \d+ of 102400 bytes", "data.url"),
    (["drop"] * 3, r"connection reset|closed the connection after \d+ of 102400 bytes", "data.url"),
    (["503"] * 3, r"HTTP 503", "data.url"),
], ids=["404", "md5-mismatch", "stall", "short-body", "drop", "503-forever"])
def test_fault_fails_with_one_line_and_leaves_nothing(tmp_path, plan, cause, hint):
    server = FaultyServer(plan)
    destination = tmp_path / "raw" / "cifar-10-python.tar.gz"
    with server.running() as url:
        started = time.monotonic()
        with pytest.raises(DataError) as caught:
            fetch(url, destination, PAYLOAD_MD5, progress=False, **FAST)
        assert time.monotonic() - started < 5
    assert_one_line_error(caught.value, url, cause, hint)
    assert_nothing_left(tmp_path / "raw")


def test_a_mirror_that_drips_bytes_is_given_up_on(tmp_path, monkeypatch):
    # a byte now and then never trips the socket timeout: the average rate does
    monkeypatch.setattr("cnnspec.data.download.SLOW_AFTER_S", 0.3)
    monkeypatch.setattr("cnnspec.data.download.MIN_BYTES_PER_S", 100_000)
    server = FaultyServer(["drip"] * 3)
    with server.running() as url:
        started = time.monotonic()
        with pytest.raises(DataError) as caught:
            fetch(url, tmp_path / "raw" / "cifar-10-python.tar.gz", PAYLOAD_MD5, progress=False, **FAST)
        assert time.monotonic() - started < 5
    assert_one_line_error(caught.value, url, r"slower than 97 KiB/s \(after 3 attempts\)", "data.url")
    assert_nothing_left(tmp_path / "raw")


@pytest.mark.parametrize("fault", ["drip_head", "continue_forever"])
def test_a_response_head_that_never_ends_is_given_up_on(tmp_path, monkeypatch, fault):
    # each read gets a byte or a line in time: only a bound on the whole head ends it
    monkeypatch.setattr("cnnspec.data.download.HEAD_WITHIN_S", 0.3)
    with FaultyServer([fault] * 3).running() as url:
        started = time.monotonic()
        with pytest.raises(DataError) as caught:
            fetch(url, tmp_path / "raw" / "cifar-10-python.tar.gz", PAYLOAD_MD5, progress=False, **FAST)
        assert time.monotonic() - started < 5
    assert_one_line_error(caught.value, url, r"no complete response head within 0.3 s \(after 3 attempts\)",
                          "data.url")
    assert_nothing_left(tmp_path / "raw")


@pytest.mark.parametrize("fault", ["length_superscript", "length_5000_digits"])
def test_a_content_length_that_is_not_a_number_is_ignored(tmp_path, fault):
    destination = tmp_path / "cifar-10-python.tar.gz"
    with FaultyServer([fault]).running() as url:
        fetch(url, destination, PAYLOAD_MD5, progress=False, **FAST)
    assert destination.read_bytes() == PAYLOAD


@pytest.mark.parametrize("fault, cause", [
    ("redirect_to_ftp", r"HTTP 302 redirects to 'ftp://127.0.0.1:1/cifar-10-python.tar.gz', not an http\(s\)://"),
    ("redirect_to_bad_ipv6", r"not a usable URL \(Invalid IPv6 URL\)"),
])
def test_a_redirect_to_another_scheme_or_a_broken_url_is_one_line(tmp_path, fault, cause):
    server = FaultyServer([fault] * 3)
    with server.running() as url, pytest.raises(DataError) as caught:
        fetch(url, tmp_path / "raw" / "cifar-10-python.tar.gz", PAYLOAD_MD5, progress=False, **FAST)
    assert_one_line_error(caught.value, url, cause, "data.url")
    assert len(server.requests) == 1  # not retried
    assert_nothing_left(tmp_path / "raw")


@pytest.mark.parametrize("url, cause", [
    ("http://[::1/cifar-10-python.tar.gz", r"not a usable URL \(Invalid IPv6 URL\)"),
    ("http://" + "a" * 300 + "/cifar-10-python.tar.gz", r"not a usable URL \(.*label too long"),
    ("file:///tmp/a%00b.tar.gz", r"the path '/tmp/a\\x00b.tar.gz' holds a NUL character"),
    ("http://127.0.0.1:1/a\nb.tar.gz", r"control characters"),
], ids=["ipv6", "long-label", "file-nul", "newline"])
def test_a_data_url_urllib_cannot_parse_is_one_line(tmp_path, url, cause):
    with pytest.raises(DataError) as caught:
        fetch(url, tmp_path / "raw" / "cifar-10-python.tar.gz", None, progress=False, **FAST)
    message = str(caught.value)
    assert "\n" not in message and re.search(cause, message), message
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())


def test_404_and_md5_mismatch_are_not_retried(tmp_path):
    for fault in ("404", "wrong"):
        server = FaultyServer([fault] * 3)
        with server.running() as url, pytest.raises(DataError):
            fetch(url, tmp_path / "file", PAYLOAD_MD5, progress=False, **FAST)
        assert len(server.requests) == 1, fault


def test_connection_refused_fails_fast_with_one_line(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/cifar-10-python.tar.gz"
    with pytest.raises(DataError) as caught:
        fetch(url, tmp_path / "cifar-10-python.tar.gz", PAYLOAD_MD5, progress=False, **FAST)
    assert_one_line_error(caught.value, url, r"connection refused \(after 3 attempts\)", "data.url")
    assert_nothing_left(tmp_path)


def test_retries_transient_failures_then_succeeds(tmp_path):
    server = FaultyServer(["503", "stall"])
    destination = tmp_path / "cifar-10-python.tar.gz"
    with server.running() as url:
        fetch(url, destination, PAYLOAD_MD5, progress=False, **FAST)
    assert destination.read_bytes() == PAYLOAD
    assert [r["fault"] for r in server.requests] == ["503", "stall", "ok"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [destination.name]


def test_backoff_doubles_between_attempts(tmp_path, monkeypatch):
    sleeps = []
    monkeypatch.setattr("cnnspec.data.download.time.sleep", sleeps.append)
    with pytest.raises(DataError):
        fetch(f"http://127.0.0.1:{closed_port()}/x", tmp_path / "x", None, progress=False,
              timeout=0.5, attempts=4, backoff=0.25)
    assert sleeps == [0.25, 0.5, 1.0]


def test_dropped_connection_resumes_with_a_range_request(tmp_path):
    server = FaultyServer(["drop"])
    destination = tmp_path / "cifar-10-python.tar.gz"
    with server.running() as url:
        fetch(url, destination, PAYLOAD_MD5, progress=False, **FAST)
    assert destination.read_bytes() == PAYLOAD
    resumed = server.requests[1]["range"]
    assert resumed is not None and 0 < int(re.fullmatch(r"bytes=(\d+)-", resumed).group(1)) < len(PAYLOAD)


def test_server_without_range_support_restarts_from_zero(tmp_path):
    server = FaultyServer(["short", "ok_no_range"])
    destination = tmp_path / "cifar-10-python.tar.gz"
    with server.running() as url:
        fetch(url, destination, PAYLOAD_MD5, progress=False, **FAST)
    assert destination.read_bytes() == PAYLOAD  # not the first third twice
    assert server.requests[1]["range"] is not None


def test_next_run_starts_clean_after_a_failure(tmp_path):
    destination = tmp_path / "cifar-10-python.tar.gz"
    with FaultyServer(["drop"] * 3).running() as url, pytest.raises(DataError):
        fetch(url, destination, PAYLOAD_MD5, progress=False, **FAST)
    assert_nothing_left(tmp_path)
    server = FaultyServer([])
    with server.running() as url:
        fetch(url, destination, PAYLOAD_MD5, progress=False, **FAST)
    assert destination.read_bytes() == PAYLOAD
    assert server.requests[0]["range"] is None


def test_failed_fetch_keeps_a_previous_good_file(tmp_path):
    destination = tmp_path / "cifar-10-python.tar.gz"
    destination.write_bytes(b"previous")
    with FaultyServer(["wrong"]).running() as url, pytest.raises(DataError):
        fetch(url, destination, PAYLOAD_MD5, progress=False, **FAST)
    assert destination.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [destination.name]


# ---------------------------------------------------------------------------------------
# file:// URLs and data.md5.

def test_file_url_copies_and_verifies(tmp_path):
    source = tmp_path / "mirror" / "archive.tar.gz"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    fetch(source.as_uri(), tmp_path / "raw" / "a.tar.gz", PAYLOAD_MD5, progress=False)
    assert (tmp_path / "raw" / "a.tar.gz").read_bytes() == PAYLOAD


def test_missing_file_url_is_one_line_and_not_retried(tmp_path, monkeypatch):
    monkeypatch.setattr("cnnspec.data.download.time.sleep", lambda s: pytest.fail("retried a missing file"))
    url = (tmp_path / "nowhere.tar.gz").as_uri()
    with pytest.raises(DataError) as caught:
        fetch(url, tmp_path / "raw" / "a.tar.gz", PAYLOAD_MD5, progress=False)
    assert_one_line_error(caught.value, url, "no such file", "data.url")
    assert_nothing_left(tmp_path / "raw")


def test_md5_param_forms():
    cifar, mnist = get_dataset("cifar10"), get_dataset("mnist")
    assert expected_md5s(cifar, "") == cifar.files
    assert expected_md5s(cifar, "A" * 32) == {"cifar-10-python.tar.gz": "a" * 32}
    assert set(expected_md5s(mnist, "skip").values()) == {None}
    mixed = expected_md5s(mnist, {"train-images-idx3-ubyte.gz": "b" * 32})
    assert mixed["train-images-idx3-ubyte.gz"] == "b" * 32
    assert mixed["t10k-labels-idx1-ubyte.gz"] == mnist.files["t10k-labels-idx1-ubyte.gz"]
    with pytest.raises(DataError, match="data.md5: unknown file 'train.gz'"):
        expected_md5s(mnist, {"train.gz": "b" * 32})
    with pytest.raises(DataError, match="mapping file name -> md5"):
        expected_md5s(mnist, "c" * 32)
    with pytest.raises(DataError, match="data.md5: 'xyz' is not an md5"):
        expected_md5s(cifar, "xyz")


def test_file_urls_for_archives_and_folders():
    assert file_urls(get_dataset("cifar10")) == {
        "cifar-10-python.tar.gz": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"}
    assert file_urls(get_dataset("cifar10"), "file:///m/") == {"cifar-10-python.tar.gz": "file:///m/cifar-10-python.tar.gz"}
    mnist = file_urls(get_dataset("mnist"), "http://h/mnist")
    assert mnist["t10k-labels-idx1-ubyte.gz"] == "http://h/mnist/t10k-labels-idx1-ubyte.gz"
    assert len(mnist) == 4


def test_download_dataset_skips_verified_files_and_replaces_bad_ones(tmp_path):
    sums = make_mnist_folder(tmp_path / "mirror")
    raw = tmp_path / "raw"
    lines = []
    download_dataset("mnist", raw, url=(tmp_path / "mirror").as_uri(), md5=sums, log=lines.append)
    assert {name: md5_of(raw / name) for name in sums} == sums
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"corrupted")
    lines.clear()
    download_dataset("mnist", raw, url=(tmp_path / "mirror").as_uri(), md5=sums, log=lines.append)
    assert [line for line in lines if line.startswith("downloading")] == [
        f"downloading {(tmp_path / 'mirror').as_uri()}/t10k-labels-idx1-ubyte.gz"
        f" -> {raw / 't10k-labels-idx1-ubyte.gz'}"]
    assert md5_of(raw / "t10k-labels-idx1-ubyte.gz") == sums["t10k-labels-idx1-ubyte.gz"]


def test_download_dataset_extracts_cifar_once(tmp_path):
    archive = make_cifar10_archive(tmp_path / "mirror" / "cifar-10-python.tar.gz", 2, 1)
    raw = tmp_path / "raw"
    with serve_folder(tmp_path / "mirror") as base:
        folder = download_dataset("cifar10", raw, url=f"{base}/cifar-10-python.tar.gz",
                                  md5=md5_of(archive), log=lambda line: None)
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)])
        lines = []
        download_dataset("cifar10", raw, url=f"{base}/cifar-10-python.tar.gz", md5=md5_of(archive),
                         log=lines.append)
    assert not any(line.startswith(("downloading", "extracting")) for line in lines), lines


def test_download_dataset_official_md5_rejects_a_mirror_of_other_bytes(tmp_path):
    make_cifar10_archive(tmp_path / "mirror" / "cifar-10-python.tar.gz", 1, 1)
    with pytest.raises(DataError) as caught:
        download_dataset("cifar10", tmp_path / "raw", url=(tmp_path / "mirror").as_uri() + "/",
                         log=lambda line: None)
    assert "expected c58f30108f718f92721af3b95e74349a" in str(caught.value)
    assert "data.md5" in str(caught.value)
    assert not (tmp_path / "raw" / "cifar-10-python.tar.gz").exists()
    assert not (tmp_path / "raw" / "extracted").exists()


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_SUMS = {  # Debian recompressed the .gz files: these differ from upstream's
    "train-images-idx3-ubyte.gz": "cf8536b0aa1a6ac5fa3f23001093305c",
    "train-labels-idx1-ubyte.gz": "10bea18fdb374794d4bb42e356e600c9",
    "t10k-images-idx3-ubyte.gz": "f78720b4224f21cce2f2ccf2d7a94c9a",
    "t10k-labels-idx1-ubyte.gz": "0d30e22e447f3c33dab9ed536400ac01",
}
needs_debian_fashion = pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(),
    reason="Debian's Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


@needs_debian_fashion
@pytest.mark.parametrize("md5", ["skip", DEBIAN_SUMS], ids=["skip", "debian-sums"])
def test_debian_fashion_mnist_mirror(tmp_path, capsys, md5):
    folder = download_dataset("fashion-mnist", tmp_path, url=DEBIAN_FASHION.as_uri() + "/", md5=md5,
                              log=lambda line: None)
    assert {p.name for p in folder.iterdir()} == set(DEBIAN_SUMS)
    warned = "warning: data.md5 opts out of checking" in capsys.readouterr().err
    assert warned == (md5 == "skip")


@needs_debian_fashion
def test_debian_fashion_mnist_with_official_sums_is_refused(tmp_path):
    with pytest.raises(DataError, match="md5 mismatch.*expected 8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        download_dataset("fashion-mnist", tmp_path, url=DEBIAN_FASHION.as_uri(), log=lambda line: None)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# Safe extraction.

def _tar_with(path: Path, member: tarfile.TarInfo, payload: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as archive:
        ok = tarfile.TarInfo("data/ok.txt")
        ok.size = 2
        archive.addfile(ok, io.BytesIO(b"ok"))
        if member.isfile():
            member.size = len(payload)
            archive.addfile(member, io.BytesIO(payload))
        else:
            archive.addfile(member)
    return path


def _member(name, kind=tarfile.REGTYPE, linkname=""):
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, linkname
    return member


@pytest.mark.parametrize("member, why", [
    (_member("../evil.txt"), "'..'"),
    (_member("data/../../evil.txt"), "'..'"),
    (_member("/tmp/evil.txt"), "absolute path"),
    (_member("data/link", tarfile.SYMTYPE, "../../etc/passwd"), "a symbolic link"),
    (_member("data/link", tarfile.SYMTYPE, "/etc/passwd"), "a symbolic link"),
    (_member("data/hard", tarfile.LNKTYPE, "../outside"), "a hard link"),
    (_member("data/dev", tarfile.CHRTYPE), "device"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-up", "symlink-absolute", "hardlink", "device"])
def test_safe_extract_refuses_escaping_members(tmp_path, member, why):
    archive = _tar_with(tmp_path / "evil.tar.gz", member)
    target = tmp_path / "out" / "extracted"
    with pytest.raises(DataError) as caught:
        safe_extract(archive, target)
    message = str(caught.value)
    assert f"refusing member '{member.name}'" in message and why in message and "\n" not in message
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary folder left either
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_replaces_the_folder_and_refuses_even_a_link_that_stays_inside(tmp_path):
    target = tmp_path / "extracted"
    target.mkdir()
    (target / "stale").write_text("old")
    safe_extract(_tar_with(tmp_path / "good.tar.gz", _member("data/other.txt")), target)
    assert (target / "data" / "ok.txt").read_text() == "ok" and not (target / "stale").exists()
    # links, each harmless alone, can chain out of the folder (Python's filter="data"
    # missed such a chain before 3.11.13): a dataset archive never needs one
    archive = _tar_with(tmp_path / "link.tar.gz", _member("data/link", tarfile.SYMTYPE, "ok.txt"))
    with pytest.raises(DataError, match=r"refusing member 'data/link': a symbolic link \(to 'ok.txt'\)"):
        safe_extract(archive, target)
    assert (target / "data" / "ok.txt").read_text() == "ok"  # the folder as it was


def test_a_symlink_chain_out_of_the_folder_writes_nothing_outside(tmp_path):
    # a/x -> .., then escape -> a/x/.., then escape/victim.txt: each link lexically inside
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    path = tmp_path / "chain.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.addfile(_member("a", tarfile.DIRTYPE))
        archive.addfile(_member("a/x", tarfile.SYMTYPE, ".."))
        archive.addfile(_member("escape", tarfile.SYMTYPE, "a/x/.."))
        payload = b"written outside"
        member = _member("escape/victim.txt")
        member.size = len(payload)
        archive.addfile(member, io.BytesIO(payload))
    with pytest.raises(DataError, match="refusing member 'a/x': a symbolic link"):
        safe_extract(path, tmp_path / "out" / "extracted")
    assert victim.read_text() == "original" and not (tmp_path / "out" / "extracted").exists()


def test_an_archive_of_too_many_members_is_refused_while_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr("cnnspec.data.archives.MAX_MEMBERS", 3)
    path = tmp_path / "many.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for index in range(5):
            archive.addfile(_member(f"data/{index}.bin"), io.BytesIO(b""))
    with pytest.raises(DataError, match=r"refusing an archive of more than 3 members"):
        safe_extract(path, tmp_path / "out" / "extracted")
    assert list((tmp_path / "out").iterdir()) == []


def test_an_archive_of_folders_nested_a_thousand_deep_is_refused_while_it_is_read(tmp_path):
    # 1,200 nested folders in 20 KB took tarfile's filter 35 s, then the removal of what
    # came out of it ended in shutil.rmtree's RecursionError
    mirror = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    mirror.parent.mkdir()
    with tarfile.open(mirror, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        for depth in range(1, 1200):
            archive.addfile(_member("a/" * depth, tarfile.DIRTYPE))
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        download_dataset("cifar10", tmp_path / "raw", url=mirror.as_uri(), md5="skip", progress=False,
                         log=lambda line: None)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert re.search(r"refusing member 'a(/a){17}': 17 folders deep \(more than 16\)", message), message
    assert "removed" in message and list((tmp_path / "raw").iterdir()) == []


def test_safe_extract_of_a_corrupt_archive_is_one_line(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + os.urandom(200))
    with pytest.raises(DataError, match="not a readable tar archive"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _archive_with_a_header_of(path: Path, kind: bytes, body_bytes: int) -> Path:
    """A gzip'd tar whose first member is an extended header (PAX 'x', GNU long name 'L'
    or long link 'K') declaring `body_bytes` of zeros: a few kB on disk."""
    header = tarfile.TarInfo("././@LongHeader")
    header.type, header.size = kind, body_bytes
    block = header._create_header(header.get_info(), tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    zeros = b"\0" * (1 << 20)
    with gzip.open(path, "wb") as archive:
        archive.write(block)
        for start in range(0, body_bytes + (-body_bytes) % 512, len(zeros)):
            archive.write(zeros[:min(len(zeros), body_bytes + (-body_bytes) % 512 - start)])
        archive.write(b"\0" * 1024)
    return path


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK],
                         ids=["pax", "gnu-longname", "gnu-longlink"])
def test_safe_extract_refuses_an_extended_header_bomb_before_reading_it(tmp_path, kind):
    archive = _archive_with_a_header_of(tmp_path / "bomb.tar.gz", kind, 200 << 20)
    assert archive.stat().st_size < 1 << 20
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        safe_extract(archive, tmp_path / "out" / "extracted")
    message = str(caught.value)
    assert message.startswith(f"{archive}: refusing an extended header of 209,715,200 bytes") and "\n" not in message
    assert time.monotonic() - started < 1.0  # tarfile read 200 MB of zeros in seconds before
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_safe_extract_refuses_a_long_chain_of_extended_headers(tmp_path):
    path = tmp_path / "chain.tar.gz"
    with gzip.open(path, "wb") as archive:
        for index in range(40):
            header = tarfile.TarInfo(f"././@PaxHeader{index}")
            header.type, header.size = tarfile.XHDTYPE, 512
            archive.write(header._create_header(header.get_info(), tarfile.USTAR_FORMAT, "utf-8",
                                                "surrogateescape"))
            archive.write(b"\0" * 512)
        archive.write(b"\0" * 1024)
    with pytest.raises(DataError, match="refusing more than 16 extended headers before one member"):
        safe_extract(path, tmp_path / "out")


def test_a_real_pax_archive_still_extracts(tmp_path):
    path = tmp_path / "pax.tar.gz"
    name = "data/" + "long-name-" * 20 + ".txt"  # longer than ustar's 100 characters
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        member = _member(name)
        member.size = 2
        archive.addfile(member, io.BytesIO(b"ok"))
    safe_extract(path, tmp_path / "out")
    assert (tmp_path / "out" / name).read_text() == "ok"


def test_a_member_name_with_a_line_break_is_quoted_on_one_line(tmp_path):
    archive = _tar_with(tmp_path / "evil.tar.gz", _member("evil\nerror: all good", tarfile.SYMTYPE, "x\ny"))
    with pytest.raises(DataError) as caught:
        safe_extract(archive, tmp_path / "out")
    message = str(caught.value)
    assert "\n" not in message
    assert "refusing member 'evil\\nerror: all good': a symbolic link (to 'x\\ny')" in message


# A dataset archive holds plain files: every GNU sparse format is refused before
# tarfile reads its map.

def _block(name: str, size: int, kind: bytes) -> bytes:
    header = tarfile.TarInfo(name)
    header.size, header.type = size, kind
    return header._create_header(header.get_info(), tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def _padded(body: bytes) -> bytes:
    return body + b"\0" * (-len(body) % 512)


def _pax_records(records: dict[str, str]) -> bytes:
    text = b""
    for keyword, value in records.items():
        record = f" {keyword}={value}\n".encode()
        length = len(record) + 1
        while len(str(length)) + len(record) != length:
            length = len(str(length)) + len(record)
        text += str(length).encode() + record
    return text


def _sparse_archive(path: Path, records: dict[str, str], body: bytes = b"x") -> Path:
    """A gzip'd tar of one member under a PAX header holding GNU.sparse `records`."""
    pax = _pax_records(records)
    with gzip.open(path, "wb") as archive:
        archive.write(_block("././@PaxHeader", len(pax), tarfile.XHDTYPE) + _padded(pax))
        archive.write(_block("GNUSparseFile.0/data_batch_1", len(body), tarfile.REGTYPE))
        archive.write(_padded(body) + b"\0" * 1024)
    return path


def _old_gnu_sparse_archive(path: Path) -> Path:
    with gzip.open(path, "wb") as archive:
        archive.write(_block("cifar-10-batches-py/data_batch_1", 512, tarfile.GNUTYPE_SPARSE))
        archive.write(b"\0" * 512 * 3)
    return path


SPARSE_1_0 = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
              "GNU.sparse.name": "cifar-10-batches-py/data_batch_1", "GNU.sparse.realsize": "10"}
SPARSE_ARCHIVES = {
    "1.0-short-map": lambda path: _sparse_archive(path, SPARSE_1_0, b"2\n1\n"),
    # tarfile collects the map into a list: 4 million numbers cost seconds and hundreds of MB
    "1.0-huge-map": lambda path: _sparse_archive(path, SPARSE_1_0, b"2000000\n" + b"0\n" * 4_000_000),
    "0.0-not-a-number": lambda path: _sparse_archive(path, {"GNU.sparse.size": "abc"}),
    "0.1": lambda path: _sparse_archive(path, {"GNU.sparse.map": "0,1", "GNU.sparse.size": "1"}),
    "name-only": lambda path: _sparse_archive(path, {"GNU.sparse.realsize": "abc"}),
    "old-gnu": _old_gnu_sparse_archive,
}


@pytest.mark.parametrize("make", SPARSE_ARCHIVES.values(), ids=SPARSE_ARCHIVES.keys())
def test_a_sparse_member_is_refused_before_its_map_is_read(tmp_path, make):
    archive = make(tmp_path / "sparse.tar.gz")
    assert archive.stat().st_size < 50_000
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        safe_extract(archive, tmp_path / "out" / "extracted")
    assert time.monotonic() - started < 1.0
    message = str(caught.value)
    assert message.startswith(f"{archive}: refusing member '") and "\n" not in message
    assert message.endswith("': a sparse file; a dataset archive holds plain files and folders only")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_header_tarfile_cannot_parse_is_one_line_not_a_traceback(tmp_path):
    # a NUL in a PAX path made the extraction raise ValueError: embedded null byte
    path = tmp_path / "nul.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        member = _member("data/ok.txt")
        member.size, member.pax_headers = 2, {"path": "data/a\0b.txt"}
        archive.addfile(member, io.BytesIO(b"ok"))
    with pytest.raises(DataError, match=r"not a readable tar archive: embedded null byte$"):
        safe_extract(path, tmp_path / "out" / "extracted")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_downloaded_archive_with_a_sparse_member_is_discarded(tmp_path):
    mirror = _sparse_archive(tmp_path / "cifar-10-python.tar.gz", SPARSE_1_0, b"2\n1\n")
    _write_params(tmp_path, url=mirror.as_uri(), md5="skip")
    for _ in range(2):  # the next run fetches the archive again rather than keep a bad one
        result = _run_stage(tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "a sparse file" in lines[-1] and "removed" in lines[-1], result.stderr
        assert not (tmp_path / "data" / "raw" / "cifar-10-python.tar.gz").exists()


def test_a_tar_bomb_is_refused_at_its_first_header_not_after_decompressing_it(tmp_path):
    # concatenated bz2 streams of zeros: 1 GiB of the declared 9 GiB in under 5 kB (1 TiB
    # fits in 1.4 MB); every member was decompressed before the sizes were added up
    member = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    member.size = 9 << 30
    zeros = bz2.compress(b"\0" * (16 << 20))
    archive = tmp_path / "bomb.tar.bz2"
    archive.write_bytes(bz2.compress(member.tobuf(tarfile.GNU_FORMAT)) + zeros * 64)
    assert archive.stat().st_size < 5_000
    started = time.monotonic()
    with pytest.raises(DataError, match=r"refusing to extract 9,663,676,416 bytes \(more than 8,589,934,592\)"):
        safe_extract(archive, tmp_path / "out" / "extracted")
    assert time.monotonic() - started < 1.0
    assert list((tmp_path / "out").iterdir()) == []


def test_the_running_total_is_refused_at_the_member_that_crosses_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr("cnnspec.data.archives.MAX_EXTRACTED_BYTES", 1_000_000)
    path = tmp_path / "three.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for index in range(3):
            member = _member(f"data/{index}.bin")
            member.size = 600_000
            archive.addfile(member, io.BytesIO(b"\0" * member.size))
    with pytest.raises(DataError, match=r"refusing to extract 1,200,000 bytes \(more than 1,000,000\)"):
        safe_extract(path, tmp_path / "out" / "extracted")


# ---------------------------------------------------------------------------------------
# The stage as a command.

def _write_params(folder: Path, **data):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(data)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _run_stage(folder: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CNNSPEC_DEBUG", None)
    return subprocess.run([sys.executable, str(REPO / "stages" / "download.py")], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=60)


def test_download_stage_offline_fails_within_seconds_with_one_line(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/x.tar.gz"
    _write_params(tmp_path, url=url)
    started = time.monotonic()
    result = _run_stage(tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 15, elapsed
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert url in lines[0] and "connection refused" in lines[0] and "data.url" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "raw" / "cifar-10-python.tar.gz").exists()


@pytest.mark.parametrize("dataset, source, said", [
    ("folder", "my_images",
     "no such folder (-S data.source=data/my_images? paths are relative to the repository root)"),
    ("csv", "my_images/labels.csv",
     "no such file (-S data.source=data/my_images/labels.csv? paths are relative to the repository root)"),
    ("folder", "data/my_images/labels.csv",
     "is a file, not a folder (a CSV manifest is read with -S data.dataset=csv)"),
    ("csv", "data/my_images",
     "is a folder, not a file (a folder of class folders is read with -S data.dataset=folder)"),
    ("folder", "pictures", "no such folder"),  # nothing like it: no guess
])
def test_a_source_of_your_own_images_that_is_not_there_says_what_was_likely_meant(
        tmp_path, monkeypatch, dataset, source, said):
    """The README puts the images under data/ and the CSV beside them; a newcomer types the
    folder's own name, or switches folder and csv with only one of the two keys."""
    from cnnspec.errors import ParamsError
    from cnnspec.pipeline.params import check_user_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "my_images" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "my_images" / "labels.csv").write_text("path,label\n")
    with pytest.raises(ParamsError) as caught:
        check_user_source({"dataset": dataset, "source": source})
    assert str(caught.value) == f"params.yaml: data.source: {source}: {said}"


def test_the_download_stage_names_a_misspelt_source_of_your_own_images(tmp_path):
    # under dvc repro the download stage runs first: without this check DVC itself stops
    # at preprocess's missing dependency, with an errno and no param key
    (tmp_path / "data" / "my_images" / "cat").mkdir(parents=True)
    _write_params(tmp_path, dataset="folder", source="data/my_image")
    result = _run_stage(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: params.yaml: data.source: data/my_image: no such folder"
    assert not (tmp_path / "data" / "raw").exists()
    _write_params(tmp_path, dataset="csv", source="data/my_images")
    result = _run_stage(tmp_path)
    assert result.stderr.strip() == ("error: params.yaml: data.source: data/my_images: is a folder, not a file "
                                     "(a folder of class folders is read with -S data.dataset=folder)")
    _write_params(tmp_path, dataset="folder", source="data/raw")  # -S data.dataset=folder alone
    (tmp_path / "data" / "raw").mkdir()
    result = _run_stage(tmp_path)
    assert result.stderr.strip() == ("error: params.yaml: data.source: still data/raw, the built-in datasets' "
                                     "download folder; set it to your images' folder (-S data.source=...)")
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert "data.source" in dvc_yaml["stages"]["download"]["params"]


def test_download_stage_fetches_from_a_local_mirror(tmp_path):
    archive = make_cifar10_archive(tmp_path / "mirror" / "cifar-10-python.tar.gz", 2, 1)
    _write_params(tmp_path, url=(tmp_path / "mirror").as_uri() + "/", md5=md5_of(archive))
    result = _run_stage(tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "raw" / "extracted" / "cifar-10-batches-py" / "test_batch").is_file()


def test_loopback_mirror_bypasses_the_environment_proxy(tmp_path, monkeypatch):
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with FaultyServer([]).running() as url:
        fetch(url, tmp_path / "a.tar.gz", PAYLOAD_MD5, progress=False, **FAST)
    assert (tmp_path / "a.tar.gz").read_bytes() == PAYLOAD


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch):
    source = tmp_path / "archive.tar.gz"
    source.write_bytes(PAYLOAD)
    for terminal, shown in ((io.StringIO(), False), (FakeTerminal(), True)):
        monkeypatch.setattr(sys, "stderr", terminal)
        fetch(source.as_uri(), tmp_path / "raw" / "a.tar.gz", PAYLOAD_MD5, progress=True)
        assert ("archive.tar.gz" in terminal.getvalue() and "100k" in terminal.getvalue()) == shown


def test_a_slow_download_into_a_log_says_how_far_it_is_in_plain_lines(tmp_path, monkeypatch):
    # stderr a pipe or a file (a CI log): no bar, no carriage returns, a line now and then
    monkeypatch.setattr("cnnspec.progress.LINE_EVERY_S", 0.2)
    monkeypatch.setattr("cnnspec.data.download.SLOW_AFTER_S", 60)
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    payload = PAYLOAD[:2500]  # dripped in 25 pieces over about 1.3 s
    with FaultyServer(["drip"], payload).running() as url:
        fetch(url, tmp_path / "a.tar.gz", hashlib.md5(payload).hexdigest(), progress=True, **FAST)
    lines = log.getvalue().splitlines()
    assert 2 <= len(lines) <= 8, lines
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    for line in lines:
        assert re.fullmatch(r"downloading cifar-10-python\.tar\.gz: [\d.]+/2\.4 KiB \(\d+%\), "
                            r"[\d.]+ KiB/s, about \d+ s left", line), line
