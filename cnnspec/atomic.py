"""Write files and folders so that they appear complete or not at all.

Each helper writes to a temporary file (or folder) in the destination's folder,
flushes it to disk, then renames it over the destination (an atomic operation on
POSIX). If anything fails midway the temporary file is removed and the destination
is left as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike):
    """Yield a temporary path next to `destination`; on success rename it there."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp",
                                         dir=destination.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_text(destination, text: str) -> None:
    with atomic_path(destination) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(destination, data) -> None:
    write_text(destination, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_numpy(destination, array) -> None:
    import numpy

    with atomic_path(destination) as temporary:
        with open(temporary, "wb") as out:
            numpy.save(out, array, allow_pickle=False)


def save_torch(destination, obj) -> None:
    import torch

    with atomic_path(destination) as temporary:
        torch.save(obj, temporary)


@contextlib.contextmanager
def atomic_folder(destination):
    """Yield an empty temporary folder next to `destination`; on success it replaces
    `destination` by renames, on failure it is removed and `destination` is untouched.
    (The extracted archive in data/raw/, data/prepared/.)"""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp",
                                      dir=destination.parent))
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _swap_in(temporary, destination)


def _swap_in(folder: Path, destination: Path) -> None:
    # A folder cannot be renamed over a non-empty one: move the old one aside first.
    if not destination.exists():
        os.replace(folder, destination)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".old", dir=destination.parent))
    os.replace(destination, aside / destination.name)
    os.replace(folder, destination)
    shutil.rmtree(aside)
