"""Shared test setup: the repository root is importable, so tests can use
`from tests.fakedata import ...` and `from stages import train`, and tests
that make git commits have an identity; the `cuda_paths_on_cpu` fixture."""
import os
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


@pytest.fixture
def cuda_paths_on_cpu(monkeypatch):
    """Run the training loop's CUDA-only path (autocast) on CPU."""
    from cnnspec.training import loop as training

    monkeypatch.setattr(training, "CUDA_PATHS_ON_CPU", True)


import tests.fuzzing  # noqa: E402,F401  registers the hypothesis profiles (cnnspec, fuzz)
