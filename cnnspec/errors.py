"""The exceptions cnnspec raises for user mistakes, and the guard that turns them
into one-line messages.

Every mistake a user can make (a bad spec, a bad params.yaml, a failed download,
a diverging run) is a `CnnspecError`. Command-line entry points wrap their main
function in `exit_on_user_error`, which prints `str(error)` on one line and exits
with the error's `exit_code`; the traceback is shown only with `--debug` or
`CNNSPEC_DEBUG=1`.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import os
import sys


def first_line(error: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message; `default` (else its type's name) when it
    has none. For errors from torch, onnxruntime or Pillow quoted in one line of ours."""
    return (str(error).strip().splitlines() or [default or type(error).__name__])[0]


def one_line(text) -> str:
    """`text` with every run of whitespace, line breaks included, as one space: a
    library's or the system's message (urllib's, tarfile's) quoted in one line of ours."""
    return " ".join(str(text).split())


def on_one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped as Python writes
    them (`\\n`, `\\x1b`): a name taken from a user's file cannot print a line of its own."""
    return "".join(char if char.isprintable() or char == "\t" else ascii(char)[1:-1] for char in text)


def listed_names(names) -> str:
    """Names (classes, columns) joined by ', ', each quoted only where it would otherwise
    blur the list: a comma, a quote, space at an end, or a character that does not print."""
    def shown(name: str) -> str:
        plain = name and name.strip() == name and on_one_line(name) == name and not any(c in name for c in ",'\"")
        return name if plain else repr(name)
    return ", ".join(shown(str(name)) for name in names)


CONTROL_CATEGORIES = ("Cc", "Zl", "Zp", "Cs")  # controls, line and paragraph breaks, lone surrogates


def control_character(text: str) -> str | None:
    """The first character of `text` that would move a terminal's cursor or break a line
    (a control, a line or paragraph separator, a lone surrogate), or None. Spaces of every
    kind, accents and emoji with joiners are text."""
    import unicodedata

    return next((char for char in text if unicodedata.category(char) in CONTROL_CATEGORIES), None)


class CnnspecError(Exception):
    """Base class of every error caused by user input or the environment. Its message is
    one line: a line break or escape sequence from a user's file (a key, a URL, a name)
    is escaped, for callers in Python as for the command line's printer."""

    exit_code = 1

    def __str__(self) -> str:
        return on_one_line(super().__str__())


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
        return on_one_line(f"{place}{key}{self.message}")


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


class OutputError(CnnspecError):
    """A file cannot be written where it was asked for: the path is a folder, a parent is
    a file, or the folder is read-only or not ours."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `dvc` and `kill` send) arrived: handled like Ctrl-C, so every
    `finally` and atomic writer removes its temporary file on the way out."""


# Set once SIGTERM arrived: Python drops an exception raised by a signal handler in a few
# places (a fork's at-fork hooks, a __del__), so the atomic writers check this too and
# never rename a temporary into place after a SIGTERM.
TERMINATED: list = []


# Non-empty while a termination_deferred block runs: SIGTERM is recorded, not raised.
DEFERRING: list = []


def raise_if_terminated() -> None:
    if TERMINATED:
        raise Terminated()


@contextlib.contextmanager
def termination_deferred():
    """Run a few steps that must not be cut in two (renames that swap an output into
    place): a SIGTERM (with terminate_like_interrupt's handler) or, in the main thread, a
    Ctrl-C arriving inside is acted on when the block ends."""
    import signal
    import threading

    interrupted = []
    catch_interrupt = (threading.current_thread() is threading.main_thread()
                       and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if catch_interrupt:
        signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    DEFERRING.append(True)
    try:
        yield
    finally:
        DEFERRING.pop()
        if catch_interrupt:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    raise_if_terminated()
    if interrupted:
        raise KeyboardInterrupt


def terminate_like_interrupt() -> None:
    """From now on SIGTERM raises Terminated in the main thread (exit 143 through
    exit_on_user_error). Called by the stages that write large outputs."""
    import signal
    import threading
    import time

    def raise_terminated(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends at once
        TERMINATED.append(signum)  # for the atomic writers, should the raise below be swallowed
        if not DEFERRING:
            raise Terminated()

    def deliver_again():
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    def swallowed(unraisable, previous=sys.unraisablehook):
        # Raised where Python cannot propagate it (an at-fork hook, a __del__): send the
        # signal again, so that it lands at the next ordinary line instead.
        if isinstance(unraisable.exc_value, Terminated):
            signal.signal(signal.SIGTERM, raise_terminated)
            threading.Thread(target=deliver_again, daemon=True).start()
            return
        previous(unraisable)

    sys.unraisablehook = swallowed
    signal.signal(signal.SIGTERM, raise_terminated)


def die_with_parent() -> None:
    """On Linux, ask the kernel to SIGTERM this process when its parent dies (prctl
    PR_SET_PDEATHSIG), so a stage whose `dvc` is killed does not train on as an
    orphan. A no-op elsewhere. If the parent died while this was being set up,
    terminate now."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        parent = os.getppid()
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect: we were reparented
        os.kill(os.getpid(), signal.SIGTERM)


def debug_enabled(argv: list[str] | None = None) -> bool:
    """Show tracebacks? `--debug` anywhere on the command line (default: this process's),
    or CNNSPEC_DEBUG set to anything but 0. The one place cnnspec decides it."""
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("CNNSPEC_DEBUG", "") not in ("", "0")


def skip_collection_at_exit() -> None:
    """Let the interpreter's shutdown skip its last garbage collection: over the objects
    torch and its compiler stack create it takes 0.5-0.9 s, in every stage and command.
    Shutdown still runs atexit handlers and frees the modules; what a command writes it
    has closed before it returns. Registered by commands, not by `import cnnspec`."""
    atexit.unregister(gc.freeze)  # once, however many commands one process runs
    atexit.register(gc.freeze)


def end_finished_script() -> None:
    """End a stage script's process once its main() returned: run the atexit handlers,
    flush stdout and stderr, then os._exit(0), skipping the freeing of every module and
    object (0.13-0.25 s once torch is imported). Only for `if __name__ == "__main__":`.
    It returns instead, for the interpreter's usual exit, while a thread that is not a
    daemon still runs (the usual exit waits for it and stops thread pools as it knows
    how) or under a profiler or tracer (`python -m cProfile`, coverage, pdb: they
    report at that exit)."""
    import threading

    if sys.getprofile() is not None or sys.gettrace() is not None:
        return
    if any(thread is not threading.main_thread() and not thread.daemon and thread.is_alive()
           for thread in threading.enumerate()):
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def exit_on_user_error(main):
    """Decorate a command's main(): a CnnspecError becomes one line on stderr (any line
    break in it escaped) and
    a non-zero exit; KeyboardInterrupt exits 130 and SIGTERM (see terminate_like_interrupt)
    143, without a traceback. The process's exit skips the final garbage collection."""

    @functools.wraps(main)
    def guarded(*args, **kwargs):
        skip_collection_at_exit()
        try:
            result = main(*args, **kwargs)
            raise_if_terminated()  # a SIGTERM whose exception was swallowed still ends as one
            return result
        except CnnspecError as error:
            if debug_enabled():
                raise
            print(f"error: {on_one_line(str(error))}", file=sys.stderr)
            sys.exit(error.exit_code)
        except KeyboardInterrupt as interrupt:
            if debug_enabled():
                raise
            terminated = isinstance(interrupt, Terminated)
            print("terminated (SIGTERM); no partial output was kept" if terminated else "interrupted",
                  file=sys.stderr)
            sys.exit(143 if terminated else 130)

    return guarded
