"""Is this path a regular file? Asked before a reader opens it: opening a FIFO blocks
until someone writes, a device may never end, a symlink loop fails deep inside a
library. Each of those becomes one line naming what the path is.

    problem = not_a_regular_file(path)   # None, or "a named pipe (FIFO)", "a symlink loop", ...
"""
from __future__ import annotations

import errno
import os
import stat


def file_kind(mode: int) -> str:
    """What a file of this st_mode is, in words."""
    for test, word in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return word
    return "not a regular file"


def not_a_regular_file(path) -> str | None:
    """None for a regular file (or a symlink to one); otherwise what the path is, in
    words: 'a named pipe (FIFO)', 'a socket', 'a folder', 'a symlink loop',
    'a broken symlink', 'missing'."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symlink loop"
        if error.errno == errno.ENOENT:
            return "a broken symlink" if os.path.islink(path) else "missing"
        return f"unreadable ({error.strerror or error})"
    return None if stat.S_ISREG(mode) else file_kind(mode)
