"""Hypothesis profiles and the per-case bounds of the fuzz tests.

    pytest tests/test_spec_fuzz.py                             # profile "cnnspec": fast, fixed cases
    pytest tests/test_spec_fuzz.py --hypothesis-profile=fuzz   # `make fuzz`: 20 times the cases

Tests size their runs with `examples(n)` (n cases in the default profile, n times the
profile's factor otherwise) and wrap each case in `bounded()`: it must finish within its
time and not grow the process's peak memory by more than its bound.
"""
from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

from hypothesis import HealthCheck, settings

BASE_EXAMPLES = 100
settings.register_profile(
    "cnnspec", derandomize=True, database=None, deadline=10_000, print_blob=False,
    max_examples=BASE_EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.large_base_example,
                           HealthCheck.function_scoped_fixture])
settings.register_profile("fuzz", settings.get_profile("cnnspec"), derandomize=False,
                          max_examples=20 * BASE_EXAMPLES, deadline=30_000)
settings.load_profile("cnnspec")


def factor() -> int:
    """How many times the default profile's cases the loaded profile runs."""
    return max(1, settings.default.max_examples // BASE_EXAMPLES)


def examples(count: int) -> int:
    return count * factor()


def peak_rss_bytes() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) * 1024 if match else None


def rss_bytes() -> int | None:
    try:
        match = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def reset_peak_rss() -> bool:
    """Linux: restart the peak-RSS counter (VmHWM) at the current size."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def bounded(seconds: float = 10.0, megabytes: int = 512):
    """The case inside must take under `seconds` and add under `megabytes` to the
    process's peak resident memory (measured where Linux can reset the peak)."""
    measured = reset_peak_rss()
    before = rss_bytes() if measured else None
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed < seconds, f"one case took {elapsed:.1f} s (bound {seconds} s)"
    if before is not None:
        grown = (peak_rss_bytes() or 0) - before
        assert grown < megabytes << 20, f"one case grew memory by {grown >> 20} MiB (bound {megabytes} MiB)"
