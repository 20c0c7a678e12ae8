"""Write files so that they appear complete or not at all.

Each helper writes to a temporary file in the destination's folder, flushes it
to disk, then renames it over the destination (an atomic operation on POSIX).
If anything fails midway the temporary file is removed and the destination is
left as it was; a write that fails because the disk is full is a DiskFullError,
one line naming the destination.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from cnnspec.errors import DiskFullError


# A write that fails while the disk has less than this free is reported as a full disk:
# torch.save and numpy.save do not always pass the ENOSPC errno on.
NEARLY_FULL_BYTES = 256 * 1024
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike):
    """Yield a temporary path next to `destination`; on success rename it there.

    A write that fails because the disk is full raises DiskFullError naming
    `destination`; the temporary file is removed either way."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp",
                                             dir=destination.parent)
    except OSError as error:
        if disk_is_full(error, destination.parent):
            raise DiskFullError(destination) from None
        raise
    os.close(handle)
    try:
        yield Path(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, destination)
    except (OSError, RuntimeError) as error:
        full = disk_is_full(error, destination.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if full:
            raise DiskFullError(destination) from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def disk_is_full(error: BaseException, folder) -> bool:
    """Whether `error` (raised by a write into `folder`) came from a full disk."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


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

    with atomic_path(destination) as temporary, open(temporary, "wb") as out:
        torch.save(obj, out)  # through a Python file, so a full disk raises OSError(ENOSPC)
