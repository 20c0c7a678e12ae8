"""Running the frameworks: peak memory, one run, and the interleaved repeats."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path

import torch

from benchmarks.versus_peers.cnnspec_train import run_cnnspec
from benchmarks.versus_peers.data import BenchmarkMismatch, Run, Task
from benchmarks.versus_peers.keras_fit import run_keras
from benchmarks.versus_peers.lightning_fit import run_lightning
from benchmarks.versus_peers.plain_loop import run_plain


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


class PeakMemory:
    """CUDA: torch.cuda.max_memory_allocated. CPU: the highest PSS of this process plus
    its children (DataLoader workers share pages with it; PSS counts shared pages once),
    sampled every 0.1 s on a thread."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def _sample(self) -> int:
        pid = os.getpid()
        return _pss(pid) + sum(_pss(child) for child in _children(pid))

    def _watch(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self._sample())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self._sample()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._sample())


RUNNERS = {"cnnspec": run_cnnspec, "keras": run_keras, "lightning": run_lightning, "plain": run_plain}


def one_run(framework: str, task: Task, repeat: int) -> Run:
    """One framework's run. A runner returns (epoch ends, accuracies) and may add the
    accuracy of the weights it ends with when those are an earlier epoch's; Keras with
    its own recipe may stop early (EarlyStopping), every other run trains every epoch."""
    with PeakMemory(task.device) as memory:
        ends, accuracies, *final = RUNNERS[framework](task)
    may_stop_early = framework == "keras" and task.recipe is not None
    epochs_ok = 1 <= len(ends) <= task.epochs if may_stop_early else len(ends) == task.epochs
    if not epochs_ok or len(accuracies) != len(ends):
        raise BenchmarkMismatch(f"{framework} {task.model}: {len(ends)} epoch times and {len(accuracies)} "
                                f"accuracies for {task.epochs} epochs")
    return Run(framework, task.model, repeat, [float(e) for e in ends], [float(a) for a in accuracies],
               memory.peak, len(task.train_labels), float(final[0]) if final else None)


def interleaved(tasks: list[Task], frameworks: list[str], repeats: int) -> list[Run]:
    runs = []
    for repeat in range(repeats):
        order = frameworks[repeat % len(frameworks):] + frameworks[:repeat % len(frameworks)]
        for task in tasks:
            for framework in order:
                run = one_run(framework, task, repeat)
                runs.append(run)
                print(f"repeat {repeat + 1}/{repeats} {task.model} {framework}: epochs "
                      + " ".join(f"{s:.1f}s" for s in run.epoch_seconds) + ", test accuracy "
                      + " ".join(f"{a:.4f}" for a in run.test_accuracy), file=sys.stderr, flush=True)
    return runs
