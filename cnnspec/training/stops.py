"""How a training run stops early, and the one line it stops with: Ctrl-C or SIGTERM
(`StopSignals`, checked by the step loop between steps; the progress so far is saved and
`TrainingInterrupted` exits 128 + the signal's number), a nan/inf loss, CUDA out of memory."""
from __future__ import annotations

import signal
import threading

from cnnspec.errors import TrainingError


class TrainingInterrupted(TrainingError):
    """Ctrl-C or SIGTERM: the progress is saved; the exit status is 128 + the signal's
    number (130 for Ctrl-C), like any command a signal stopped."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class StepsInterrupted(Exception):
    """Raised between two steps after Ctrl-C or SIGTERM; carries the epoch's progress
    so far (next step, order, per-step losses, correct count, lr) to be saved."""

    def __init__(self, progress: dict, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.progress, self.signum = progress, signum


class StopSignals:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into `received` (the signal's number),
    which the step loop checks between steps; a second signal interrupts at once.
    `install` False leaves the handlers alone (torchrun stops the ranks of a world). A
    signal the process was started ignoring stays ignored: a shell runs `cmd &` with
    Ctrl-C ignored (as nohup does SIGHUP), so that a Ctrl-C meant for the foreground job
    does not stop it."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, install: bool = True):
        self.received, self.install = 0, install
        self.previous = {}

    def __enter__(self):
        if self.install and threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS
                             if signal.getsignal(signum) is not signal.SIG_IGN}
        return self

    def _handle(self, signum, frame):
        if self.received:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def interrupted_error(stopped: StepsInterrupted, epoch: int, resume_path) -> TrainingInterrupted:
    name = signal.Signals(stopped.signum).name
    where = f"epoch {epoch + 1}, step {stopped.progress['step']}"
    if resume_path is None:
        return TrainingInterrupted(f"training interrupted ({name}) at {where}; nothing saved "
                                   "(no resume path)", stopped.signum)
    return TrainingInterrupted(f"training interrupted ({name}) at {where}; progress saved to "
                               f"{resume_path}, run the train stage again to continue", stopped.signum)


def divergence_error(epoch: int, step: int, precision_key: str | None = None) -> TrainingError:
    """`precision_key`: the param that turned on the run's reduced precision (None: fp32)."""
    precision = f"set {precision_key}: off, " if precision_key else ""
    return TrainingError(
        f"the training loss became nan or inf at epoch {epoch + 1}, step {step + 1}; "
        f"lower train.optimizer.lr, {precision}or add l2 / batch norm to the spec "
        "(the last good resume state is kept)")


def oom_error(batch_size: int, epoch: int) -> TrainingError:
    return TrainingError(
        f"CUDA out of memory at epoch {epoch + 1} with train.batch_size {batch_size}; "
        f"try train.batch_size {max(1, batch_size // 2)}, or train.precision: bf16")


def setup_oom_error(model) -> TrainingError:
    """Out of memory before the first step: the model, its copies or the data did not fit."""
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return TrainingError(
        f"CUDA out of memory while setting up training (the model's {parameters:,} parameters, "
        "their optimizer state and EMA copy, the training images); another process may hold "
        "the GPU (nvidia-smi lists them), else use a smaller spec or dataset")
