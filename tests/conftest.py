"""Shared test setup: the repository root is importable, so tests can use
`from tests.fakedata import ...` and `from stages import train`, and tests
that make git commits have an identity; under pytest-xdist each worker (and the
stages it starts) gets its share of the cores; the `cuda_paths_on_cpu` fixture."""
import os
import signal
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("GIT_AUTHOR_NAME", "cnnspec tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@cnnspec.invalid")
os.environ.setdefault("GIT_COMMITTER_NAME", "cnnspec tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@cnnspec.invalid")
# No DVC usage analytics from the tests: each `dvc` command would start a daemon that
# tries to reach the internet.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# `pytest -n 2` on two cores: two workers each using every core would fight over them.
# Set before torch is imported here or in a subprocess, so both read it.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))

# The Ctrl-C tests press Ctrl-C as a terminal does. A suite started with `&` from a script
# inherits SIGINT ignored (and so would the stages it starts); give it Python's own
# handler. The test of a run started ignoring Ctrl-C sets SIG_IGN itself.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def cuda_paths_on_cpu(monkeypatch):
    """Run the training loop's CUDA-only path (autocast) on CPU."""
    from cnnspec.training import device

    monkeypatch.setattr(device, "CUDA_PATHS_ON_CPU", True)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """For `pytest -n N --dist loadgroup`: tests that share a module-scoped fixture (a
    trained pipeline repository, a fitted model) run on one worker, so it is built once;
    every other test goes wherever a worker is free."""
    for item in items:
        fixture_defs = getattr(item, "_fixtureinfo", None)
        if fixture_defs is None:
            continue
        scopes = {defs[-1].scope for defs in fixture_defs.name2fixturedefs.values() if defs}
        if scopes & {"module", "class", "package"}:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    # The long tests (marked slow) first: the workers then end together instead of one
    # finishing a long test alone after the other ran out of work.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


import tests.fuzzing  # noqa: E402,F401  registers the hypothesis profiles (cnnspec, fuzz)
