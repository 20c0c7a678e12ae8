"""Signals and leftovers: SIGTERM in preprocess, download and export ends like Ctrl-C
(temporaries removed, one line, exit 143); writers sweep what a SIGKILL left; a stage
whose parent dies does not run on; a second DVC run in one workspace is named."""
from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from cnnspec.atomic import STALE_AFTER_S, save_torch, write_text
from cnnspec.pipeline import dvc_runs
from tests.imagefiles import fashion_subset, write_image_folder

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "CNNSPEC_DEBUG": ""}


def workspace(tmp_path: Path, **data) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["data"].update(data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return tmp_path


def wait_for(condition, seconds: float = 60.0, step: float = 0.002):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(step)
    raise AssertionError("timed out waiting")


def terminated_while(process: subprocess.Popen, temporaries) -> subprocess.CompletedProcess:
    """SIGTERM `process` as soon as one of `temporaries()` exists; its result."""
    wait_for(lambda: process.poll() is not None or temporaries())
    assert process.poll() is None, "finished before it could be terminated: " + process.stderr.read()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_terminated_cleanly(result, folder: Path, pattern: str):
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("terminated (SIGTERM)")
    assert "Traceback" not in result.stderr
    assert not list(folder.glob(pattern)), "a temporary was left behind"


def test_sigterm_during_preprocess_removes_the_temporary_folder(tmp_path):
    images, labels, _, _ = fashion_subset(3000, 1)
    source = tmp_path / "images"
    write_image_folder(source, images, labels, ".png")
    work = workspace(tmp_path, dataset="folder", source=str(source), image_size=[28, 28], channels=1)
    process = subprocess.Popen([sys.executable, str(ROOT / "stages" / "preprocess.py")], cwd=work,
                               env={**ENV, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    result = terminated_while(process, lambda: list((work / "data").glob(".prepared.*.tmp")))
    assert_terminated_cleanly(result, work / "data", ".prepared.*")
    assert not (work / "data" / "prepared").exists()


def test_leaving_the_decode_pool_early_ends_every_worker_it_started():
    # The preprocess stage once hung after "terminated (SIGTERM)": the signal landed while
    # a worker was being started, so the pool never knew that worker, which waited for
    # work for ever and kept the stage and its pipes alive. A process started inside the
    # pool stands in for that worker here.
    import multiprocessing

    from cnnspec.data.user_datasets import decode_pool

    before = set(multiprocessing.active_children())
    with pytest.raises(KeyboardInterrupt):
        with decode_pool(2, inline=False) as executor:
            busy = executor.submit(time.sleep, 60)
            unknown = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
            unknown.start()
            wait_for(lambda: busy.running())
            raise KeyboardInterrupt
    assert not unknown.is_alive()
    assert set(multiprocessing.active_children()) <= before


class SlowMirror:
    """An HTTP mirror that trickles its file out, 4 KiB every 20 ms."""

    def __init__(self, size: int = 1 << 20):
        self.size = size

    @contextlib.contextmanager
    def running(self):
        size = self.size

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                with contextlib.suppress(OSError):
                    for _ in range(size // 4096):
                        self.wfile.write(b"\0" * 4096)
                        self.wfile.flush()
                        time.sleep(0.02)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
            server.server_close()


def test_sigterm_during_download_removes_the_partial_file(tmp_path):
    # 4 MiB at 200 KiB/s: the first file takes 20 s, far longer than a stop should
    with SlowMirror(size=4 << 20).running() as url:
        work = workspace(tmp_path, dataset="fashion-mnist", url=url, md5="skip")
        process = subprocess.Popen([sys.executable, str(ROOT / "stages" / "download.py")], cwd=work,
                                   env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        result = terminated_while(process, lambda: [p for p in (work / "data" / "raw").glob(".*.part")
                                                    if p.stat().st_size > 0])
    assert_terminated_cleanly(result, work / "data" / "raw", ".*.part")
    assert not list((work / "data" / "raw").glob("*.gz"))


def test_sigterm_during_cnnspec_export_leaves_no_partial_export(tmp_path):
    import cnnspec
    from cnnspec.models.checkpoint import save_checkpoint

    spec = cnnspec.parse_spec("name: t\nlayers:\n  - conv: 8\n  - global_avg_pool\n  - dense: num_classes\n", "t.yaml")
    model = cnnspec.build_model(spec, (1, 28, 28), 10).eval()
    meta = {"classes": [str(i) for i in range(10)], "mean": [0.3], "std": [0.3], "input_shape": [1, 28, 28]}
    save_checkpoint(tmp_path / "model.pt", model, spec, meta, {}, 0, 0)
    # stop it while it works: the export is written and checked within a second, so the
    # signal comes from a sitecustomize hook the moment torch.jit.save starts writing
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, signal, torch.jit\n"
        "original = torch.jit.save\n"
        "def save(module, target, *args, **kwargs):\n"
        "    open(target, 'wb').write(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return original(module, target, *args, **kwargs)\n"
        "torch.jit.save = save\n")
    result = subprocess.run([sys.executable, "-m", "cnnspec.cli", "export", str(tmp_path / "model.pt"),
                             "--format", "torchscript", "--output", str(tmp_path / "out.ts.pt")],
                            cwd=tmp_path,  # no data/prepared there: the check runs on generated images
                            env={**ENV, "PYTHONPATH": f"{hook}:{ROOT}"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("terminated (SIGTERM)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hook", "model.pt"]


def test_writers_sweep_temporaries_a_killed_run_left_but_not_fresh_ones(tmp_path):
    old = time.time() - STALE_AFTER_S - 5
    stale_file = tmp_path / ".model.pt.k1ll3d.tmp"
    stale_file.write_bytes(b"half a checkpoint")
    stale_folder = tmp_path / ".model.pt.f0lder.tmp"
    stale_folder.mkdir()
    (stale_folder / "x").write_text("x")
    fresh = tmp_path / ".model.pt.wr1ting.tmp"  # another writer, still at work
    fresh.write_bytes(b"busy")
    for path in (stale_file, stale_folder):
        os.utime(path, (old, old))
    save_torch(tmp_path / "model.pt", {"a": torch.zeros(1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.pt.wr1ting.tmp", "model.pt"]


def test_a_download_sweeps_the_part_file_a_killed_download_left(tmp_path):
    from cnnspec.data.download import fetch

    source = tmp_path / "mirror" / "labels.gz"
    source.parent.mkdir()
    source.write_bytes(b"labels")
    raw = tmp_path / "raw"
    raw.mkdir()
    stale = raw / ".labels.gz.abc123.part"
    stale.write_bytes(b"\0" * 1000)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fetch(source.as_uri(), raw / "labels.gz", None, progress=False)
    assert sorted(p.name for p in raw.iterdir()) == ["labels.gz"]


def test_a_write_sweeps_only_its_own_siblings(tmp_path):
    other = tmp_path / ".other.json.x.tmp"
    other.write_text("{}")
    os.utime(other, (0, 0))
    write_text(tmp_path / "metrics.json", "{}")
    assert other.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_stage_whose_parent_dies_does_not_run_on(tmp_path):
    """A real parent starts a real child that calls die_with_parent (what stages/train.py
    does first), then the parent is SIGKILLed as a killed dvc would be."""
    child_pid = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "child = subprocess.Popen([sys.executable, '-c', 'import os, sys, time\\n"
         "from cnnspec.errors import die_with_parent\\n"
         "die_with_parent()\\n"
         "open(sys.argv[1], \"w\").write(str(os.getpid()))\\n"
         "time.sleep(120)', sys.argv[1]])\n"
         "time.sleep(120)\n", str(child_pid)], env=ENV)
    pid = int(wait_for(lambda: child_pid.exists() and child_pid.read_text()))
    assert running(pid)
    parent.kill()
    parent.wait()
    wait_for(lambda: not running(pid), seconds=10, step=0.05)
    source = (ROOT / "stages" / "train.py").read_text(encoding="utf-8")
    assert "die_with_parent()" in source.split("def main", 1)[1]


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def rwlock(root: Path, pid: int, cmd: str = "dvc exp run") -> None:
    (root / ".dvc" / "tmp").mkdir(parents=True, exist_ok=True)
    (root / ".dvc" / "tmp" / "rwlock").write_text(json.dumps(
        {"write": {str(root / "data" / "raw"): {"pid": pid, "cmd": cmd}},
         "read": {str(root / "params.yaml"): [{"pid": pid, "cmd": cmd}]}}))


def test_another_live_dvc_run_is_found_and_stale_or_own_entries_are_not(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "dvc", "exp", "run"])
    try:
        rwlock(tmp_path, other.pid)
        assert dvc_runs.other_runs(tmp_path) == [(other.pid, "dvc exp run")]
        rwlock(tmp_path, os.getpid(), "dvc repro")  # this process's own run: not another one
        assert dvc_runs.other_runs(tmp_path) == []
    finally:
        other.kill()
        other.wait()
    rwlock(tmp_path, other.pid)  # the run ended (or was killed) and left its entry
    assert dvc_runs.other_runs(tmp_path) == []
    (tmp_path / ".dvc" / "tmp" / "rwlock").write_text("{not json")
    assert dvc_runs.other_runs(tmp_path) == []


def test_the_resolve_stage_names_another_run_in_one_line(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "dvc", "exp", "run"])
    try:
        work = workspace(tmp_path)
        rwlock(work, other.pid)
        result = subprocess.run([sys.executable, str(ROOT / "stages" / "resolve.py")], cwd=work, env=ENV,
                                capture_output=True, text=True, timeout=120)
    finally:
        other.kill()
        other.wait()
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"pid {other.pid}: dvc exp run" in result.stderr and "dvc exp run --queue" in result.stderr
    assert not (work / "params.resolved.yaml").exists()


def _interrupt_right_after_creating(monkeypatch, name_start: str):
    """os.mkdir and os.open make what they are asked to, then, the first time for a name
    starting with `name_start`, raise KeyboardInterrupt: a signal landing right after the
    syscall that created the temporary."""
    interrupted = []
    for function in ("mkdir", "open"):
        real = getattr(os, function)

        def made_then_interrupted(path, *args, real=real, **kwargs):
            result = real(path, *args, **kwargs)
            if Path(path).name.startswith(name_start) and not interrupted:
                interrupted.append(path)
                if isinstance(result, int):
                    os.close(result)
                raise KeyboardInterrupt
            return result

        monkeypatch.setattr(os, function, made_then_interrupted)


def test_a_signal_right_after_a_temporary_is_made_leaves_nothing_behind(tmp_path, monkeypatch):
    from cnnspec.atomic import atomic_folder
    from cnnspec.data.download import fetch

    source = tmp_path / "mirror.gz"
    source.write_bytes(b"labels")
    out = tmp_path / "out"
    out.mkdir()
    writers = {
        ".metrics.json.": lambda: write_text(out / "metrics.json", "{}"),
        ".prepared.": lambda: atomic_folder(out / "prepared").__enter__(),
        ".labels.gz.": lambda: fetch(source.as_uri(), out / "labels.gz", None, progress=False),
    }
    for name_start, write in writers.items():
        with monkeypatch.context() as patched:
            _interrupt_right_after_creating(patched, name_start)
            with pytest.raises(KeyboardInterrupt):
                write()
        assert list(out.iterdir()) == [], f"{name_start}*: a temporary was left behind"


SWAP_WITH_SIGTERM = """
import json, os, signal, sys
from pathlib import Path
from cnnspec import errors
from cnnspec.atomic import atomic_folder

destination = Path(sys.argv[1]) / "prepared"
destination.mkdir()
(destination / "old.txt").write_text("old")
errors.terminate_like_interrupt()
real_replace, signalled = os.replace, []

def replace_then_signal(source, target):
    real_replace(source, target)
    if not signalled:  # once: the handler makes a second SIGTERM end the process
        signalled.append(True)
        os.kill(os.getpid(), signal.SIGTERM)  # lands before the next line: between the renames

os.replace = replace_then_signal
try:
    with atomic_folder(destination) as temporary:
        (temporary / "new.txt").write_text("new")
    ended = "finished"
except errors.Terminated:
    ended = "terminated"
print(json.dumps({"ended": ended, "signalled": bool(signalled),
                  "siblings": sorted(p.name for p in destination.parent.iterdir()),
                  "inside": sorted(p.name for p in destination.iterdir()) if destination.exists() else None}))
"""


def test_a_sigterm_between_the_renames_of_a_folder_swap_lands_after_them(tmp_path):
    # Replacing data/prepared takes two renames (the old folder aside, the new one in):
    # a SIGTERM between them once left no data/prepared at all.
    result = subprocess.run([sys.executable, "-c", SWAP_WITH_SIGTERM, str(tmp_path)], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state == {"ended": "terminated", "signalled": True, "siblings": ["prepared"], "inside": ["new.txt"]}
