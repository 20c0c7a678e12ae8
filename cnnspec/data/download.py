"""Fetch dataset files with retries and md5 checks; an archive is unpacked by archives.py.

    fetch("https://.../cifar-10-python.tar.gz", "data/raw/cifar-10-python.tar.gz", md5)
    download_dataset("cifar10", "data/raw", url="", md5="")

A file appears at its destination only once it is complete and its md5 matched:
bytes arrive in a hidden temporary file beside it, which is renamed into place
after the check and removed on any failure. Transient faults (refused or reset
connections, timeouts, bodies cut short, HTTP 5xx) are retried with exponential
backoff, resuming with an HTTP Range request when the server allows it; a 404
or a wrong md5 is not retried. Every failure is a DataError of one line naming
the URL, the cause and the setting that fixes it.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from cnnspec.atomic import sweep_stale_siblings, temporary_sibling
from cnnspec.data.archives import safe_extract
from cnnspec.data.datasets import EXTRACTED, DatasetInfo, get_dataset
from cnnspec.errors import DataError, on_one_line, one_line, raise_if_terminated
from cnnspec.paths import RAW
from cnnspec.progress import Progress
from cnnspec.regular_files import not_a_regular_file

DEFAULT_TIMEOUT = 10.0   # seconds without a byte before a connection counts as stalled
# A mirror that drips a byte now and then never stalls for DEFAULT_TIMEOUT: after this
# long, a transfer slower than this on average counts as failed (CIFAR-10 at this rate
# would take three hours).
SLOW_AFTER_S = 60.0
MIN_BYTES_PER_S = 16 * 1024
# Nor does a status line and headers sent a byte at a time, or an endless run of
# "100 Continue" responses: a response's head must arrive within this of connecting.
HEAD_WITHIN_S = 60.0
DEFAULT_ATTEMPTS = 4
DEFAULT_BACKOFF = 0.5    # seconds before the first retry; doubles after each
CHUNK = 1 << 20
RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

NETWORK_HINT = "check the network, or set data.url to a mirror (http(s):// or file://)"
MISSING_HINT = "set data.url to a mirror that has the file"
TOO_LARGE_HINT = "is data.url the dataset's own file?"
MD5_HINT = ("if this mirror serves other bytes, set data.md5 to their md5 "
            "(a mapping file name -> md5 for a folder), or to 'skip'")


class TransientFault(Exception):
    """A failure worth retrying."""


class PermanentFault(Exception):
    """A failure that a retry would repeat; carries the hint that fixes it."""

    def __init__(self, cause: str, hint: str = MISSING_HINT):
        super().__init__(cause)
        self.hint = hint


# ---------------------------------------------------------------------------------------
# Fetching one file.

# What a download may grow to: the dataset's known size plus a margin (a mirror may
# compress differently), else what the server announces, else this.
SIZE_MARGIN = 0.10
MAX_DOWNLOAD_BYTES = 4 << 30
# The official files' sizes in bytes (the md5s are in datasets.py).
KNOWN_SIZES = {
    "cifar-10-python.tar.gz": 170_498_071, "cifar-100-python.tar.gz": 169_001_437,
    "train-images-idx3-ubyte.gz": 26_421_880, "train-labels-idx1-ubyte.gz": 29_515,   # Fashion-MNIST
    "t10k-images-idx3-ubyte.gz": 4_422_102, "t10k-labels-idx1-ubyte.gz": 5_148,
}
KNOWN_SIZES_MNIST = {"train-images-idx3-ubyte.gz": 9_912_422, "train-labels-idx1-ubyte.gz": 28_881,
                     "t10k-images-idx3-ubyte.gz": 1_648_877, "t10k-labels-idx1-ubyte.gz": 4_542}
# What an archive must hold once extracted (inside its archive_folder) for its decoder.
ARCHIVE_CONTENTS = {
    "cifar10": ["batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"],
    "cifar100": ["meta", "train", "test"],
}


def size_limit(dataset: str, file: str) -> int:
    """The most bytes a download of `file` of `dataset` may have."""
    known = (KNOWN_SIZES_MNIST if dataset == "mnist" else KNOWN_SIZES).get(file)
    return int(known * (1 + SIZE_MARGIN)) + (1 << 20) if known else MAX_DOWNLOAD_BYTES


def fetch(url: str, destination, md5: str | None, progress: bool = True, *,
          timeout: float = DEFAULT_TIMEOUT, attempts: int = DEFAULT_ATTEMPTS,
          backoff: float = DEFAULT_BACKOFF, max_bytes: int = MAX_DOWNLOAD_BYTES) -> Path:
    """Download `url` to `destination`, checking `md5` (None: no check, the caller warned)
    and stopping at `max_bytes` (a server that sends more, or announces more, is refused).

    Returns the destination; raises DataError and leaves no file behind on failure."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_siblings(destination, ".part")  # what a download killed earlier left
    with temporary_sibling(destination, ".part") as partial:
        _transfer_with_retries(url, partial, progress, timeout, attempts, backoff, max_bytes)
        if md5 is not None:
            actual = md5_of(partial)
            if actual != md5.lower():
                raise DataError(f"{on_one_line(url)}: md5 mismatch: got {actual}, expected {md5.lower()}; {MD5_HINT}")
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        raise_if_terminated()
        os.replace(partial, destination)
    return destination


def _transfer_with_retries(url, partial, progress, timeout, attempts, backoff,
                           max_bytes: int = MAX_DOWNLOAD_BYTES) -> None:
    transfer = _transfer_for(url)
    for attempt in range(1, attempts + 1):
        try:
            transfer(url, partial, progress, timeout, max_bytes)
            return
        except PermanentFault as fault:
            raise DataError(f"{on_one_line(url)}: {fault}; {fault.hint}") from None
        except TransientFault as fault:
            if attempt == attempts:
                tries = f" (after {attempts} attempts)" if attempts > 1 else ""
                raise DataError(f"{on_one_line(url)}: {fault}{tries}; {NETWORK_HINT}") from None
            time.sleep(backoff * 2 ** (attempt - 1))


def _transfer_for(url: str):
    try:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
    except ValueError as error:  # "http://[::1"
        raise DataError(f"{on_one_line(url)}: not a usable URL ({one_line(error)}); "
                        "set data.url to an http://, https:// or file:// URL") from None
    transfers = {"http": _http_transfer, "https": _http_transfer, "file": _file_transfer}
    if scheme not in transfers:
        raise DataError(f"{on_one_line(url)}: unsupported URL scheme '{scheme}'; "
                        "set data.url to an http://, https:// or file:// URL")
    return transfers[scheme]


def _http_transfer(url: str, partial: Path, progress: bool, timeout: float,
                   max_bytes: int = MAX_DOWNLOAD_BYTES) -> None:
    """Append the rest of `url` to `partial`, resuming from its size when the server allows."""
    offset = partial.stat().st_size
    headers = {"User-Agent": "cnnspec"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with _opener_for(url).open(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            if offset and not _resumes_at(response, offset):
                offset = 0  # the server sent the whole file again
            length = _announced_length(response)
            expected = offset + length if length is not None else None
            if expected is not None and expected > max_bytes:
                raise PermanentFault(f"the server announces {expected:,} bytes, more than this "
                                     f"file's size can be ({max_bytes:,})", TOO_LARGE_HINT)
            received = _copy(response, partial, offset, expected, progress, url, max_bytes)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the partial file is longer than the file itself
            partial.write_bytes(b"")
            raise TransientFault("HTTP 416 for a resumed download; starting over") from None
        cause = f"HTTP {error.code} {one_line(error.reason)}"
        if error.code in RETRYABLE_HTTP:
            raise TransientFault(cause) from None
        raise PermanentFault(cause) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _classify(error, timeout) from None
    except ValueError as error:  # a URL urllib cannot parse: data.url's, or where a redirect points
        raise PermanentFault(f"not a usable URL ({one_line(error)})") from None
    if expected is not None and received < expected:
        raise TransientFault(f"the server closed the connection after {received} of {expected} bytes")


def _announced_length(response) -> int | None:
    """The Content-Length the server announces, or None when it is absent or not a
    number (urllib passes on what the server wrote: '²', or 5,000 digits)."""
    length = response.headers.get("Content-Length", "").strip()
    return int(length) if length.isascii() and length.isdigit() and len(length) <= 18 else None


def _opener_for(url: str):
    handlers = [_HTTPHandler, _HTTPSHandler, _RedirectHandler]
    # A mirror on this machine is never reached through the http_proxy of the environment.
    if urllib.parse.urlsplit(url).hostname in LOOPBACK:
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


class _HeadDeadline:
    """Mixed into http.client's connections: the socket is shut down when the response's
    head has not arrived HEAD_WITHIN_S after connecting (each read only waits `timeout`)."""

    late = False

    def connect(self):
        self._deadline = threading.Timer(HEAD_WITHIN_S, self._too_late)
        self._deadline.daemon = True
        self._deadline.start()
        super().connect()

    def _too_late(self):
        self.late = True
        with contextlib.suppress(OSError, AttributeError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def getresponse(self):
        try:
            response = super().getresponse()
        except (OSError, http.client.HTTPException):
            if not self.late:
                raise
        finally:
            self._deadline.cancel()
        if self.late:  # the head it parsed, if any, was cut short
            raise TransientFault(f"no complete response head within {HEAD_WITHIN_S:g} s")
        return response

    def close(self):
        if hasattr(self, "_deadline"):
            self._deadline.cancel()
        super().close()


class _HTTPConnection(_HeadDeadline, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_HeadDeadline, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def do_open(self, http_class, request, **options):
        return super().do_open(_HTTPConnection, request, **options)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def do_open(self, http_class, request, **options):
        return super().do_open(_HTTPSConnection, request, **options)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, but only to http(s):// (urllib would follow one to ftp://)."""

    def redirect_request(self, request, response, code, message, headers, new_url):
        if urllib.parse.urlsplit(new_url).scheme.lower() not in ("http", "https"):
            raise PermanentFault(f"HTTP {code} redirects to {new_url!r}, not an http(s):// URL")
        return super().redirect_request(request, response, code, message, headers, new_url)


def _resumes_at(response, offset: int) -> bool:
    content_range = response.headers.get("Content-Range", "")
    return response.status == 206 and content_range.startswith(f"bytes {offset}-")


def _classify(error: BaseException, timeout: float) -> Exception:
    """Turn a network exception into a TransientFault or PermanentFault with a short cause."""
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, socket.gaierror):
        return PermanentFault("cannot resolve the host name (no network?)", NETWORK_HINT)
    if isinstance(reason, (TimeoutError, socket.timeout)) or "timed out" in str(reason):
        return TransientFault(f"no response within {timeout:g} s")
    if isinstance(reason, ConnectionRefusedError):
        return TransientFault("connection refused")
    if isinstance(reason, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return TransientFault("connection reset by the server")
    if isinstance(reason, http.client.IncompleteRead):
        return TransientFault("the server closed the connection mid-transfer")
    if isinstance(reason, (http.client.HTTPException, ConnectionError)):
        return TransientFault(f"{type(reason).__name__}: {one_line(reason)}")
    return PermanentFault(f"{type(reason).__name__}: {one_line(reason)}", NETWORK_HINT)


def _file_transfer(url: str, partial: Path, progress: bool, timeout: float,
                   max_bytes: int = MAX_DOWNLOAD_BYTES) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise PermanentFault(f"file:// URLs must name a local path, not host '{parts.netloc}'")
    source = Path(urllib.request.url2pathname(parts.path))
    if "\0" in str(source):
        raise PermanentFault(f"the path {str(source)!r} holds a NUL character")
    problem = not_a_regular_file(source)
    if problem and problem not in ("missing", "a folder"):  # a FIFO would block, /dev/zero never ends
        raise PermanentFault(f"{source} is {problem}, not a regular file")
    try:
        with open(source, "rb") as reader:
            _copy(reader, partial, 0, source.stat().st_size, progress, url, max_bytes)
    except FileNotFoundError:
        raise PermanentFault(f"no such file {source}") from None
    except IsADirectoryError:
        raise PermanentFault(f"{source} is a folder, not a file") from None
    except OSError as error:
        raise PermanentFault(f"cannot read {source}: {one_line(error.strerror or error)}") from None


def _copy(reader, partial: Path, offset: int, expected: int | None, progress: bool, url: str,
          max_bytes: int = MAX_DOWNLOAD_BYTES) -> int:
    """Copy `reader` into `partial` from byte `offset`; returns the file's size afterwards.
    Stops (PermanentFault) once the file would pass `max_bytes`."""
    read = getattr(reader, "read1", reader.read)  # what has arrived: a trickle cannot hold one read open
    started = time.monotonic()
    with open(partial, "r+b" if offset else "wb") as out, _progress_bar(progress, expected, offset, url) as bar:
        out.seek(offset)
        out.truncate()
        while chunk := read(CHUNK):
            if out.tell() + len(chunk) > max_bytes:
                raise PermanentFault(f"stopped after {out.tell():,} bytes: more than this file's size "
                                     f"can be ({max_bytes:,})", TOO_LARGE_HINT)
            out.write(chunk)
            bar.update(len(chunk))
            elapsed = time.monotonic() - started
            if elapsed > SLOW_AFTER_S and (out.tell() - offset) / elapsed < MIN_BYTES_PER_S:
                raise TransientFault(f"the mirror sent {out.tell() - offset:,} bytes in {elapsed:.0f} s, slower "
                                     f"than {MIN_BYTES_PER_S // 1024} KiB/s")
        return out.tell()


def _progress_bar(enabled: bool, total: int | None, initial: int, url: str) -> Progress:
    """A Progress of the file's bytes: a bar on a terminal, a line now and then in a log."""
    name = PurePosixPath(urllib.parse.urlsplit(url).path).name or url
    return Progress(f"downloading {on_one_line(name)}", total, unit="B", initial=initial, enabled=enabled)


def md5_of(path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# A whole dataset: which files, from where, checked against which sums.

def file_urls(info: DatasetInfo, url: str = "") -> dict[str, str]:
    """File name -> URL. `url` is "" (official), an archive's URL, or a folder's URL."""
    base = url or info.url
    if info.is_archive and not base.endswith("/"):
        (name,) = info.files
        return {name: base}
    folder = base if base.endswith("/") else base + "/"
    return {name: folder + name for name in info.files}


def expected_md5s(info: DatasetInfo, md5="") -> dict[str, str | None]:
    """File name -> expected md5 (None: not checked), from the `data.md5` param."""
    if md5 == "":
        return dict(info.files)
    if md5 == "skip":
        return {name: None for name in info.files}
    if isinstance(md5, str):
        if not info.is_archive:
            raise DataError(f"data.md5: {info.name} has {len(info.files)} files; give a mapping "
                            f"file name -> md5 ({', '.join(info.files)}) or 'skip'")
        return {name: _checked_md5(md5, "data.md5") for name in info.files}
    if isinstance(md5, dict):
        unknown = sorted(set(md5) - set(info.files))
        if unknown:
            raise DataError(f"data.md5: unknown file '{unknown[0]}' for {info.name}; "
                            f"its files are {', '.join(info.files)}")
        return {name: _checked_md5(md5.get(name, official), f"data.md5.{name}")
                for name, official in info.files.items()}
    raise DataError(f"data.md5: expected '', 'skip', an md5 or a mapping, got {type(md5).__name__}")


def _checked_md5(value, key: str) -> str | None:
    if value == "skip":
        return None
    text = str(value).lower()
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        raise DataError(f"{key}: '{value}' is not an md5 (32 hex digits) or 'skip'")
    return text


def download_dataset(name: str, raw=RAW, url: str = "", md5="", progress: bool = True,
                     log=print, **fetch_options) -> Path:
    """Fetch a dataset's files into `raw` (and unpack an archive into raw/extracted/),
    skipping files already there and verified. Returns the folder the decoder reads."""
    info = get_dataset(name)
    raw = Path(raw)
    sums = expected_md5s(info, md5)
    unchecked = [file for file, expected in sums.items() if expected is None]
    if unchecked:
        print(f"warning: data.md5 opts out of checking {', '.join(unchecked)}: "
              "a corrupt or wrong file will not be detected here", file=sys.stderr)
    for file, source in file_urls(info, url).items():
        destination = raw / file
        if destination.is_file() and (sums[file] is None or md5_of(destination) == sums[file]):
            log(f"{destination}: present and verified, not downloading")
            continue
        log(f"downloading {source} -> {destination}")
        fetch(source, destination, sums[file], progress,
              **{"max_bytes": size_limit(name, file), **fetch_options})
    if info.is_archive:
        archive = raw / next(iter(info.files))
        try:
            _extract_once(archive, raw / EXTRACTED, log)
            if not info.data_folder(raw).is_dir():
                raise DataError(f"{archive}: the archive has no folder "
                                f"'{info.archive_folder}/'; is data.url the {name} archive?")
            missing = [part for part in ARCHIVE_CONTENTS.get(name, [])
                       if not (info.data_folder(raw) / part).is_file()]
            if missing:
                raise DataError(f"{archive}: the archive lacks {', '.join(missing)} in "
                                f"'{info.archive_folder}/'; is data.url the {name} archive?")
        except DataError as error:
            raise DataError(f"{error}; {_discard_archive(archive, raw / EXTRACTED)}") from None
    return info.data_folder(raw)


def _discard_archive(archive: Path, extracted: Path) -> str:
    """Remove an archive that matched its md5 but cannot be used, and what came out of
    it, so that the next run downloads it again instead of failing the same way."""
    archive.unlink(missing_ok=True)
    if extracted.is_dir():
        shutil.rmtree(extracted)
    return f"removed {archive} so the next run downloads it again"


STAMP = ".cnnspec-archive-md5"  # inside raw/extracted/: which archive it came from


def _extract_once(archive: Path, folder: Path, log) -> None:
    archive_md5 = md5_of(archive)
    stamp = folder / STAMP
    if stamp.is_file() and stamp.read_text().strip() == archive_md5:
        log(f"{folder}: already extracted from {archive.name}")
        return
    log(f"extracting {archive} -> {folder}")
    safe_extract(archive, folder)
    (folder / STAMP).write_text(archive_md5 + "\n")
