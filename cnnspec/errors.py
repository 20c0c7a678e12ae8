"""The exceptions cnnspec raises for user mistakes, and the guard that turns them
into one-line messages.

Every mistake a user can make (a bad spec, a bad params.yaml, a failed download,
a diverging run) is a `CnnspecError`. Command-line entry points wrap their main
function in `exit_on_user_error`, which prints `str(error)` on one line and exits
with the error's `exit_code`; the traceback is shown only with `--debug` or
`CNNSPEC_DEBUG=1`.
"""
from __future__ import annotations

import functools
import os
import sys


class CnnspecError(Exception):
    """Base class of every error caused by user input or the environment."""

    exit_code = 1


class SpecError(CnnspecError):
    """A spec file that cannot be turned into a model.

    `str(error)` is `file:line:col: key: message`, with the parts that are known.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 col: int | None = None, key: str | None = None):
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        place = ""
        if self.file:
            place = str(self.file)
            if self.line is not None:
                place += f":{self.line}"
                if self.col is not None:
                    place += f":{self.col}"
            place += ": "
        key = f"{self.key}: " if self.key else ""
        return f"{place}{key}{self.message}"


class ParamsError(CnnspecError):
    """params.yaml is missing, malformed, or holds an invalid value."""

    exit_code = 2


class DataError(CnnspecError):
    """Downloading, verifying or decoding a dataset failed."""


class TrainingError(CnnspecError):
    """Training cannot go on: divergence, out of memory, a bad checkpoint."""


class UsageError(CnnspecError):
    """A bad command-line argument."""

    exit_code = 2


class DiskFullError(CnnspecError):
    """A write failed for lack of space; the file it was replacing is unchanged."""

    def __init__(self, path, reason: str = "no space left on device"):
        self.path = path
        super().__init__(f"{path}: {reason} while writing it (the previous version, if any, "
                         "is unchanged); free some disk space and run again")


def debug_enabled(argv: list[str] | None = None) -> bool:
    """Show tracebacks? `--debug` anywhere on the command line (default: this process's),
    or CNNSPEC_DEBUG set to anything but 0. The one place cnnspec decides it."""
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("CNNSPEC_DEBUG", "") not in ("", "0")


def exit_on_user_error(main):
    """Decorate a command's main(): a CnnspecError becomes one line on stderr and
    a non-zero exit; KeyboardInterrupt exits 130 without a traceback."""

    @functools.wraps(main)
    def guarded(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except CnnspecError as error:
            if debug_enabled():
                raise
            print(f"error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return guarded
