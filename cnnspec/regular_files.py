"""Is this path a regular file? Asked before a reader opens it: opening a FIFO blocks
until someone writes, a device may never end, a symlink loop fails deep inside a
library. Each of those becomes one line naming what the path is.

    problem = not_a_regular_file(path)   # None, or "a named pipe (FIFO)", "a symlink loop", ...
    value = read_json(path)              # bounded in bytes and depth; any problem is a ValueError
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


# The JSON files cnnspec reads (meta.json, files.json, DVCLive's metrics.json, the evaluate
# report) can come from a colleague's cache or a pull request. The largest real one, the
# file list of a million images, is about 60 MB.
MAX_JSON_BYTES = 256 << 20


def read_json(path, limit: int = MAX_JSON_BYTES):
    """The JSON value in the regular file `path` of at most `limit` bytes. Anything else
    raises ValueError saying why in a few words (what the path is, too large, not UTF-8,
    not JSON, nested too deep), for the caller's own one-line error."""
    import json

    problem = not_a_regular_file(path)
    if problem:
        raise ValueError(problem if problem == "missing" else f"{problem}, not a regular file")
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise ValueError(f"unreadable ({error.strerror or error})") from None
    if len(data) > limit:
        raise ValueError(f"larger than {limit:,} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as error:  # json.JSONDecodeError
        raise ValueError(f"not JSON ({error})") from None
