"""Write files so that they appear complete or not at all.

Each helper writes to a temporary file in the destination's folder, flushes it
to disk, then renames it over the destination (an atomic operation on POSIX).
If anything fails midway the temporary file is removed and the destination is
left as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
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
