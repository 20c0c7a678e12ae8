"""What a run shows while it trains: the device and steps line before the first epoch,
the cost estimate a few steps in, a progress bar on an interactive terminal, one line
and one DVCLive step per epoch, and the clocks behind the timings.

Know the cost before paying it: a few steps after the first one (which holds compile
and warm-up, so it is not counted) the estimate of the whole run is printed. On a CPU,
a run estimated at more than CPU_MINUTES says so and names a run that fits a CPU.
Lines go through `print_line`, which keeps a progress bar intact.
"""
from __future__ import annotations

import concurrent.futures
import sys
import threading
import time
from pathlib import Path

import torch

from cnnspec.errors import TrainingError
from cnnspec.progress import Progress, duration
from cnnspec.regular_files import read_json

TIMED_STEPS = 5     # steps timed after the first for the estimate
TIMED_SECONDS = 10  # or fewer steps, once they took this long (few, slow steps an epoch)
CPU_MINUTES = 5     # a CPU run longer than this gets the advice below
CPU_SIZED_SPEC = "simcnn"  # the `name:` of specs/simcnn.yaml, which CPU_SIZED_RUN advises
CPU_SIZED_RUN = ("dvc exp run -S model.spec=specs/simcnn.yaml -S train.epochs=2 "
                 "(a 122k-parameter CNN with its own recipe; docs/benchmarks.md has its time and accuracy), "
                 "or fewer epochs: -S train.epochs=N")
SMALL_IMAGE_SIDE = 32  # own images larger than this: the advice names data.image_size first


def cpu_sized_run(own_images: bool, input_shape, spec_name: str | None = None) -> str:
    """The advice for a long CPU run. For one's own images the image size is the first
    lever (the arithmetic of a conv network grows with the pixels), and their spec and
    recipe stay. A run of the CPU-sized spec itself is told only to train fewer epochs."""
    fewer_epochs = "dvc exp run -S train.epochs=N (fewer epochs)"
    if not own_images:
        return fewer_epochs if spec_name == CPU_SIZED_SPEC else CPU_SIZED_RUN
    height, width = input_shape[-2:] if input_shape else (0, 0)
    if min(height, width) <= SMALL_IMAGE_SIDE:
        return fewer_epochs
    scale = SMALL_IMAGE_SIDE / min(height, width)
    smaller = [round(height * scale), round(width * scale)]
    share = smaller[0] * smaller[1] / (height * width)
    return (f"dvc exp run -S 'data.image_size=[{smaller[0]},{smaller[1]}]' (smaller images, about {share:.0%} "
            f"of the arithmetic of {height}x{width}), or {fewer_epochs}")


class CostClock:
    """Told after each optimizer step; prints its two lines through `say`."""

    def __init__(self, say, device: torch.device, epochs: int, start_epoch: int,
                 steps_per_epoch: int, batch_size: int, num_train: int, early_stopping: bool,
                 precision: torch.dtype | None = None, advice: str = CPU_SIZED_RUN):
        self.say, self.device, self.advice = say, device, advice
        self.steps_left = (epochs - start_epoch) * steps_per_epoch
        self.steps_per_epoch, self.early_stopping = steps_per_epoch, early_stopping
        self.seen, self.started = 0, None
        resumed = f", resuming at epoch {start_epoch + 1}" if start_epoch else ""
        plural = "" if epochs == 1 else "s"
        autocast = {torch.bfloat16: " in bf16", torch.float16: " in fp16"}.get(precision, "")
        steps = f"{steps_per_epoch:,} step{'' if steps_per_epoch == 1 else 's'}"
        images = f"{batch_size} image{'' if batch_size == 1 else 's'}"
        say(f"training on {device}{autocast}: {epochs} epoch{plural} x {steps} of {images} "
            f"({num_train:,} training images){resumed}")

    def step_done(self, now=time.perf_counter) -> None:
        """The first step (compile, warm-up) is not timed; the estimate comes after
        TIMED_STEPS more, or sooner once the timed steps took TIMED_SECONDS."""
        self.seen += 1
        if self.seen == 1:
            self.started = now()
        elif self.started is not None and (self.seen == 1 + TIMED_STEPS or now() - self.started >= TIMED_SECONDS):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            per_step = (now() - self.started) / (self.seen - 1)
            self.started = None  # reported: once is enough
            self.report(per_step)

    def report(self, per_step: float) -> None:
        total = per_step * self.steps_left
        upper = " at most (early stopping may end it sooner)" if self.early_stopping else ""
        per_epoch = "" if self.steps_left <= self.steps_per_epoch else \
            f", {duration(per_step * self.steps_per_epoch)} per epoch"  # one epoch: the run's time again
        self.say(f"estimate: {duration(total)} for the run{upper}{per_epoch} ({per_step * 1000:.0f} ms per step)")
        if self.device.type == "cpu" and total > CPU_MINUTES * 60:
            self.say(f"this is a long run for a CPU ({duration(total)}); a CPU-sized run: {self.advice}")


# ---------------------------------------------------------------- clocks and epoch lines

class Clock:
    """The loop's own seconds in this process, with its first step apart (it holds
    torch.compile's work when compile is on); the device is synchronized once, after
    that first step."""

    def __init__(self, device: torch.device):
        self.device, self.started = device, time.perf_counter()
        self.first_step_seconds, self._first_step_started = 0.0, None
        self._first_step_done = False
        self.cost = None  # a CostClock, told after each step

    def step_starts(self) -> None:
        if not self._first_step_done:
            self._first_step_started = time.perf_counter()

    def step_ends(self) -> None:
        if not self._first_step_done:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.first_step_seconds = time.perf_counter() - self._first_step_started
            self._first_step_done = True
        if self.cost is not None:
            self.cost.step_done()

    def seconds_without_first_step(self) -> float:
        return time.perf_counter() - self.started - self.first_step_seconds


class EpochLog:
    """DVCLive under `log_dir` (train/loss, train/accuracy, val/loss, val/accuracy, lr
    per epoch) and one printed line per epoch. A resumed run keeps the step numbering;
    epochs saved but not yet logged when the last run died are logged from the history.

    Opening DVCLive means opening the DVC repository: about half a second of Python
    that nothing before the first epoch's end needs, so it runs in a thread beside the
    first steps (which spend their time in torch's kernels, outside the GIL). A failure
    there is raised at the first use, after that epoch's resume state is saved, or when
    the log is left, unless the run is already ending with an error of its own."""

    KEYS = ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr")

    def __init__(self, log_dir, history: list[dict], start_epoch: int, epochs: int):
        self.epochs, self._opening = epochs, None
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)  # an unwritable folder fails now
            summary = Path(log_dir) / "metrics.json"
            if start_epoch > 0 and summary.exists() and _logged_epochs(Path(log_dir)) == 0:
                # DVCLive would resume from it and fail inside with a JSON traceback
                raise TrainingError(f"{summary}: damaged (not DVCLive's JSON summary); remove {log_dir}/ "
                                    "and run the train stage again (it resumes; the log starts over)")
            self._opening = in_background(self._open, Path(log_dir), history[:start_epoch], start_epoch)

    def _open(self, log_dir: Path, history: list[dict], start_epoch: int):
        from dvclive import Live

        logged = _logged_epochs(log_dir) if start_epoch > 0 else 0
        live = Live(str(log_dir), dvcyaml=False, save_dvc_exp=False, report=None, resume=start_epoch > 0)
        live.step = min(logged, start_epoch)
        for record in history[live.step:]:
            self._log(live, record)
        return live

    @property
    def live(self):
        """The opened DVCLive (None without a log_dir), once the thread has opened it."""
        return None if self._opening is None else self._opening.result()

    def _log(self, live, record: dict) -> None:
        for key in self.KEYS:
            if key in record:  # no val/* without a validation split
                live.log_metric(key, float(record[key]))
        live.next_step()

    def epoch(self, epoch: int, record: dict, seconds: float) -> None:
        if self.live is not None:
            self._log(self.live, record)
        val = (f"  val loss {record['val/loss']:.4f} acc {record['val/accuracy']:.4f}"
               if "val/loss" in record else "")
        line = (f"epoch {epoch + 1}/{self.epochs}  train loss {record['train/loss']:.4f} "
                f"acc {record['train/accuracy']:.4f}{val}  lr {record['lr']:.3g}  {seconds:.1f}s")
        print_line(line)

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            if self.live is not None:
                _end(self.live)
        except Exception:
            if error is None:
                raise
            # the run's own error is the one to report


def _end(live) -> None:
    """live.end(), where the last thing it does may lose a race: removing its signal
    file for VS Code, which sits in the repository root and is shared by every run
    there (parallel queued experiments, a second training). Another run's end can remove
    it between DVCLive's check and its own removal; the file is gone either way."""
    try:
        live.end()
    except FileNotFoundError as missing:
        if Path(missing.filename or "").name != "DVCLIVE_STEP_COMPLETED":
            raise


def in_background(function, *args) -> concurrent.futures.Future:
    """`function(*args)` in a daemon thread (a daemon does not hold up the fast exit of
    `end_finished_script`); the Future's result() waits for it and returns its value or
    raises its exception in the caller's thread."""
    future = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(function(*args))
        except BaseException as error:  # handed to the caller of result()
            future.set_exception(error)

    threading.Thread(target=run, daemon=True, name=f"cnnspec-{function.__name__.strip('_')}").start()
    return future


def _logged_epochs(log_dir: Path) -> int:
    try:
        return int(read_json(log_dir / "metrics.json")["step"]) + 1
    except (ValueError, KeyError, TypeError):
        return 0


def interactive() -> bool:
    return sys.stderr.isatty()


def print_line(line: str) -> None:
    if interactive():
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        print(line, flush=True)


class EpochProgressBar:
    """A tqdm bar of an epoch's steps on an interactive terminal; elsewhere (a pipe, a CI
    log) a plain line of the steps done now and then (cnnspec.progress), which a long CPU
    epoch needs between its epoch lines. The bar's loss and accuracy are read from the
    device about ten times an epoch: the only syncs inside an epoch, and only when
    someone watches."""

    def __init__(self, epoch: int, epochs: int, steps: int, start: int, batch_size: int):
        self.bar, self.batch_size, self.every = None, batch_size, max(1, steps // 10)
        self.lines = None
        if interactive():
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{epochs}",
                            leave=False, file=sys.stderr, dynamic_ncols=True)
        else:
            self.lines = Progress(f"epoch {epoch + 1}/{epochs}", steps, unit="steps", initial=start)

    def __enter__(self):
        return self

    def update(self, step: int, losses: torch.Tensor, correct: torch.Tensor) -> None:
        if self.lines is not None:
            self.lines.update(1)
        if self.bar is None:
            return
        self.bar.update(1)
        if step % self.every == 0:
            self.bar.set_postfix(loss=f"{losses[:step + 1].mean().item():.4f}",
                                 acc=f"{correct.item() / ((step + 1) * self.batch_size):.4f}")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
