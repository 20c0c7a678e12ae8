"""Write files and folders so that they appear complete or not at all.

Each helper writes to a temporary file (or folder) in the destination's folder,
flushes it to disk, then renames it over the destination (an atomic operation on
POSIX). If anything fails midway the temporary file is removed and the destination
is left as it was; a write that fails because the disk is full is a DiskFullError,
one line naming the destination.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
import time
from pathlib import Path

from cnnspec.errors import DiskFullError, OutputError, raise_if_terminated, termination_deferred
from cnnspec.regular_files import file_kind

# A write that fails while the disk has less than this free is reported as a full disk:
# torch.save and numpy.save do not always pass the ENOSPC errno on.
NEARLY_FULL_BYTES = 256 * 1024
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# Errors that say what went wrong, whatever the free space (a read-only or pseudo file
# system such as /proc reports no free space at all).
NOT_SPACE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR, errno.ENOTDIR,
                    errno.EEXIST}


# A temporary sibling untouched for this long belongs to no running writer: a process
# killed with SIGKILL (or a power cut) left it, and the next write removes it.
STALE_AFTER_S = 60


def sweep_stale_siblings(destination, suffix: str = ".tmp") -> int:
    """Remove `.NAME.*SUFFIX` files and folders next to `destination` that no writer has
    touched for STALE_AFTER_S seconds; returns how many."""
    destination = Path(destination)
    pattern = "".join(f"[{c}]" if c in "*?[" else c for c in f".{destination.name}.") + f"*{suffix}"
    removed = 0
    now = time.time()
    for stale in destination.parent.glob(pattern):
        try:
            if now - stale.lstat().st_mtime < STALE_AFTER_S:
                continue
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()
            removed += 1
        except OSError:
            pass  # another process swept it, or it is not ours to remove
    return removed


@contextlib.contextmanager
def temporary_sibling(destination: Path, suffix: str = ".tmp", folder: bool = False):
    """Yield a new empty file (or folder) `.NAME.<random>SUFFIX` next to `destination`,
    made with the modes open() and mkdir() give (0666 or 0777 less the umask), and remove
    it if the block raises. Its name is chosen before it is created, so a signal that
    lands right after the creation still finds it to remove (tempfile's mkstemp and
    mkdtemp tell the name only after the file exists, and a signal in between leaks it)."""
    claimed = None
    try:
        while claimed is None:
            claimed = destination.parent / f".{destination.name}.{secrets.token_hex(6)}{suffix}"
            try:
                if folder:
                    os.mkdir(claimed, 0o777)
                else:
                    os.close(os.open(claimed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:  # another writer's: draw another name
                claimed = None
            except OSError as error:
                if error.errno in DISK_FULL_ERRNOS:
                    raise
                raise cannot_write(destination, error) from None
        yield claimed
    except BaseException:
        if claimed is not None:
            _remove(claimed)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):  # never made (a read-only folder), or already gone
            path.unlink()


def cannot_write(destination, error: OSError) -> OutputError:
    reason = (error.strerror or str(error)).lower()
    return OutputError(f"{destination}: cannot write it ({reason})")


def check_destination(destination: str | os.PathLike) -> Path:
    """`destination` as a Path, or OutputError when no file can be written there: it is
    a folder, a device, a FIFO or a socket (the write would replace it with a file: as
    root, /dev/null itself), a parent is a file, or the nearest existing folder is not
    writable. Lets a command refuse before its work rather than after."""
    destination = Path(destination)
    if destination.is_dir():
        raise OutputError(f"{destination}: is a folder; give a file name")
    try:
        mode = os.stat(destination).st_mode  # through a symlink: /dev/stdout is one
    except OSError:
        mode = None  # nothing there (or a broken link): a new file
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputError(f"{destination}: is {file_kind(mode)}, not a file; give a file name")
    system = in_system_folder(destination)
    if system:  # /dev/stdout is a link there: the write would replace the link itself
        raise OutputError(f"{destination}: is in {system}, the system's, not a folder for files; give "
                          f"another path")
    existing = destination.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{destination}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(existing) else "permission denied"
        raise OutputError(f"{destination}: cannot write it ({reason} in {existing})")
    return destination


SYSTEM_FOLDERS = ("/dev", "/proc", "/sys")  # devices and kernel files: an atomic write replaces them
FILE_FOLDERS = ("/dev/shm",)                  # but /dev/shm holds ordinary files


def in_system_folder(destination: Path) -> str | None:
    """The system folder `destination` would be written in (its folder resolved), or None."""
    folder = destination.parent.resolve()
    if any(folder.is_relative_to(top) for top in FILE_FOLDERS):
        return None
    return next((top for top in SYSTEM_FOLDERS if folder.is_relative_to(top)), None)


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike):
    """Yield a temporary path next to `destination`; on success rename it there.

    A write that fails because the disk is full raises DiskFullError naming
    `destination`; the temporary file is removed either way."""
    destination = check_destination(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise cannot_write(destination, error) from None
    sweep_stale_siblings(destination)
    # outside: creating the temporary can fail for a full disk too; inside: the disk is
    # judged before the temporary's removal frees space
    with full_disk_named(destination), temporary_sibling(destination) as temporary, full_disk_named(destination):
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        raise_if_terminated()
        try:
            os.replace(temporary, destination)
        except OSError as error:  # it became a folder meanwhile, say
            raise cannot_write(destination, error) from None


@contextlib.contextmanager
def full_disk_named(destination: Path):
    """An OSError (or a RuntimeError from torch's writer) raised while the disk is full
    becomes DiskFullError naming `destination`."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        if disk_is_full(error, destination.parent):
            raise DiskFullError(destination) from None
        raise


def disk_is_full(error: BaseException, folder) -> bool:
    """Whether `error` (raised by a write into `folder`) came from a full disk."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    if isinstance(error, OSError) and error.errno in NOT_SPACE_ERRNOS:
        return False
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def write_text(destination, text: str) -> None:
    """`text` as UTF-8. A file name that was not UTF-8 on disk reaches Python as lone
    surrogates, which UTF-8 cannot hold: they are written as `\\udcxx` escapes."""
    with atomic_path(destination) as temporary:
        temporary.write_text(text, encoding="utf-8", errors="backslashreplace")


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


@contextlib.contextmanager
def atomic_folder(destination):
    """Yield an empty temporary folder next to `destination`; on success it replaces
    `destination` by renames, on failure it is removed and `destination` is untouched.
    (The extracted archive in data/raw/, data/prepared/.)"""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_siblings(destination)
    with temporary_sibling(destination, folder=True) as temporary:
        try:
            yield temporary
            raise_if_terminated()
        except DiskFullError as error:
            if Path(error.path).is_relative_to(temporary):
                # name the file by where it was going, not by the temporary folder
                raise DiskFullError(destination / Path(error.path).relative_to(temporary)) from None
            raise
        _swap_in(temporary, destination)


def _swap_in(folder: Path, destination: Path) -> None:
    """Rename `folder` to `destination`. A folder cannot be renamed over a non-empty one:
    the old one is moved aside first, and put back if the new one cannot take its place.
    A SIGTERM or Ctrl-C is acted on after the renames, so it never leaves the moment
    between them, without `destination`, behind."""
    with termination_deferred():
        if not destination.exists():
            os.replace(folder, destination)
            return
        with temporary_sibling(destination, ".old", folder=True) as aside:  # removed if this rename fails
            os.replace(destination, aside / destination.name)
        try:
            os.replace(folder, destination)
        except OSError:
            os.replace(aside / destination.name, destination)  # should this fail too, the old one stays aside
            aside.rmdir()
            raise
        shutil.rmtree(aside, ignore_errors=True)
