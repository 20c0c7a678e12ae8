"""Is another `dvc exp run` / `dvc repro` working in this workspace right now?

DVC records the stages it is running in `.dvc/tmp/rwlock` (JSON: the paths each
running stage reads and writes, with the pid and command line of its dvc process).
Two runs at once in one workspace overwrite each other's files, and DVC then stops
one of them with a lock error; parallel experiments go through the queue instead
(`dvc exp run --queue`, then `dvc queue start`), each in its own temporary copy.
"""
from __future__ import annotations

import os
from pathlib import Path

from cnnspec.regular_files import not_a_regular_file, read_json

RWLOCK = Path(".dvc") / "tmp" / "rwlock"
QUEUE_HINT = ("run experiments one at a time here, or queue them: dvc exp run --queue ... "
              "then dvc queue start (each runs in its own copy)")


def ancestors() -> set[int]:
    """This process and its parents (the dvc that runs this stage among them)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
                pid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            try:
                return pids | {os.getppid()}
            except OSError:
                return pids
    return pids


def command_line(pid: int) -> str | None:
    """The live process's command line, or None when no such process runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, someone else's
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def other_runs(root=".") -> list[tuple[int, str]]:
    """(pid, command) of each live dvc process, not this stage's own, that holds a path of
    the workspace at `root` in DVC's rwlock. A missing or unreadable rwlock holds none."""
    try:
        lock = read_json(Path(root) / RWLOCK)
    except ValueError:
        return []
    if not isinstance(lock, dict):
        return []
    infos = list((lock.get("write") or {}).values()) if isinstance(lock.get("write"), dict) else []
    for readers in (lock.get("read") or {}).values() if isinstance(lock.get("read"), dict) else []:
        infos.extend(readers if isinstance(readers, list) else [])
    mine, found = ancestors(), {}
    for info in infos:
        pid = info.get("pid") if isinstance(info, dict) else None
        if not isinstance(pid, int) or pid in mine or pid in found:
            continue
        running = command_line(pid)
        if running is None or (running and "dvc" not in running):  # gone, or the pid was reused
            continue
        found[pid] = str(info.get("cmd") or running)
    return sorted(found.items())


def busy_message(runs: list[tuple[int, str]]) -> str:
    named = ", ".join(f"pid {pid}: {command}" for pid, command in runs)
    return f"another DVC run is working in this workspace ({named}); {QUEUE_HINT}"


# The workspace files `dvc exp show`, `dvc metrics diff` and `dvc params diff` open as they
# are, with no bound: a FIFO blocks DVC for good, a link to /dev/zero fills the memory until
# the kernel kills it. A git checkout can make such a link (a pull request's own metrics).
DVC_READS = ("dvc.yaml", "dvc.lock", "params.yaml", "params.resolved.yaml", "metrics/eval.json",
             "metrics/train/metrics.json")
MAX_DVC_READ = 64 << 20  # the largest of them, dvc.lock, is a few KB


def unreadable_for_dvc(root=".") -> str | None:
    """'NAME: what it is; ...' for the first of DVC_READS in the workspace at `root` that
    DVC would block on or read without end, else None. A missing file, a broken link or a
    folder DVC reads as absent."""
    for name in DVC_READS:
        path = Path(root) / name
        problem = not_a_regular_file(path)
        if problem in ("missing", "a broken symlink", "a folder"):
            continue
        if problem is None and path.stat().st_size <= MAX_DVC_READ:
            continue
        what = f"{problem}, not a regular file" if problem else f"larger than {MAX_DVC_READ:,} bytes"
        return f"{name}: {what}; DVC would block or never finish reading it: put the file itself there"
    return None
