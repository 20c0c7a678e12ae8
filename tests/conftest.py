"""Shared test setup: the repository root is importable, so tests can use
`from tests.fakedata import ...` and `from stages import train`; torch uses one
thread so parallel helpers and CI's two cores are not oversubscribed."""
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("GIT_AUTHOR_NAME", "cnnspec tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@cnnspec.invalid")
os.environ.setdefault("GIT_COMMITTER_NAME", "cnnspec tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@cnnspec.invalid")
