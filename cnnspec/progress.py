"""How far a long step is, on stderr, wherever stderr goes.

On an interactive terminal: a tqdm bar, redrawn in place and removed at the end.
Anywhere else (a pipe, a file, a CI log) a bar would be carriage returns and escape
codes, so a plain line is printed instead, the first after LINE_EVERY_S seconds and
then at most one every LINE_EVERY_S to LINE_EVERY_MAX_S seconds (the longer the work has
run, the sparser), with the estimate of what is left:

    predicting: 12,800/50,000 images (26%), 410.3 images/s, about 91 s left

Work shorter than LINE_EVERY_S prints nothing in a log. Does not import torch.
"""
from __future__ import annotations

import sys
import time

LINE_EVERY_S = 10.0      # the first plain line, and the shortest gap between two
LINE_EVERY_MAX_S = 60.0  # the longest gap: a tenth of the time run so far, up to this


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def byte_scale(total: int | None) -> tuple[int, str]:
    """The divisor and the name bytes are shown in: MiB, or KiB for a file under 1 MiB."""
    return (2 ** 10, "KiB") if total is not None and total < 2 ** 20 else (2 ** 20, "MiB")


class Progress:
    """update(n) after each piece of `total` (None: not known) `unit`s of work; a context
    manager. `enabled=False` shows nothing (a caller's own switch)."""

    def __init__(self, what: str, total: int | None, unit: str = "images", initial: int = 0,
                 enabled: bool = True, clock=time.monotonic):
        self.what, self.total, self.unit, self.clock = what, total, unit, clock
        self.done = self.initial = initial
        self.started = self.last_line = clock()
        self.scale, self.shown_unit = byte_scale(total) if unit == "B" else (1, unit)
        self.bar = None
        self.plain = enabled and not sys.stderr.isatty()
        if enabled and not self.plain:
            from tqdm import tqdm

            bytes_ = unit == "B"
            self.bar = tqdm(total=total, initial=initial, unit=unit, unit_scale=bytes_,
                            unit_divisor=1024 if bytes_ else 1000, desc=what, leave=False,
                            file=sys.stderr, dynamic_ncols=True)

    def update(self, count: int = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.plain:
            now = self.clock()
            gap = min(LINE_EVERY_MAX_S, max(LINE_EVERY_S, (now - self.started) / 10))
            if now - self.last_line >= gap:
                self.last_line = now
                print(self.line(now - self.started), file=sys.stderr, flush=True)

    def line(self, elapsed: float) -> str:
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        unit, decimals = self.shown_unit, 1 if self.scale > 1 else 0
        text = f"{self.what}: {self.done / self.scale:,.{decimals}f}"
        if not self.total:
            return f"{text} {unit} in {duration(elapsed)}"
        text += f"/{self.total / self.scale:,.{decimals}f} {unit} ({self.done / self.total:.0%})"
        if rate <= 0:
            return f"{text}, nothing more for {duration(elapsed)}"
        return (f"{text}, {rate / self.scale:,.1f} {unit}/s, "
                f"about {duration(max(0, self.total - self.done) / rate)} left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
