"""Know the cost before paying it: what a training run will do, and how long it will take.

Before the first epoch the loop prints the device and the steps per epoch; a few steps
later (the first one, with compile and warm-up, is not counted) it prints an estimate
of the whole run. On a CPU, a run estimated at more than CPU_MINUTES says so and names
a run that fits a CPU.
"""
from __future__ import annotations

import time

import torch

TIMED_STEPS = 5     # steps timed after the first for the estimate
CPU_MINUTES = 5     # a CPU run longer than this gets the advice below
CPU_SIZED_RUN = ("dvc exp run -S model.spec=specs/simcnn.yaml -S train.epochs=2 "
                 "(a 122k-parameter CNN with its own recipe; docs/benchmarks.md has its time and accuracy), "
                 "or fewer epochs: -S train.epochs=N")


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class CostClock:
    """Told after each optimizer step; prints its two lines through `say`."""

    def __init__(self, say, device: torch.device, epochs: int, start_epoch: int,
                 steps_per_epoch: int, batch_size: int, num_train: int, early_stopping: bool):
        self.say, self.device = say, device
        self.steps_left = (epochs - start_epoch) * steps_per_epoch
        self.steps_per_epoch, self.early_stopping = steps_per_epoch, early_stopping
        self.seen, self.started = 0, None
        resumed = f", resuming at epoch {start_epoch + 1}" if start_epoch else ""
        plural = "" if epochs == 1 else "s"
        say(f"training on {device}: {epochs} epoch{plural} x {steps_per_epoch} steps of {batch_size} "
            f"images ({num_train} training images){resumed}")

    def step_done(self) -> None:
        self.seen += 1
        if self.seen == 1:
            self.started = time.perf_counter()
        elif self.seen == 1 + TIMED_STEPS:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            per_step = (time.perf_counter() - self.started) / TIMED_STEPS
            self.report(per_step)

    def report(self, per_step: float) -> None:
        total = per_step * self.steps_left
        upper = " at most (early stopping may end it sooner)" if self.early_stopping else ""
        self.say(f"estimate: {duration(total)} for the run{upper}, "
                 f"{duration(per_step * self.steps_per_epoch)} per epoch ({per_step * 1000:.0f} ms per step)")
        if self.device.type == "cpu" and total > CPU_MINUTES * 60:
            self.say(f"this is a long run for a CPU ({duration(total)}); a CPU-sized run: {CPU_SIZED_RUN}")
