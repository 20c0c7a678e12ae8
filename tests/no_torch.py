"""Check that some cnnspec code runs without importing a module that takes seconds to
import (torch, or torch's compiler)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_without_importing(module: str, statements: str, *args: str) -> subprocess.CompletedProcess:
    """Run `statements` (with `args` as sys.argv[1:]) in a fresh interpreter at the
    repository root; it fails if they imported `module`. Returns the finished process
    for further checks."""
    code = f"import sys\n{statements}\nassert {module!r} not in sys.modules, '{module} was imported'"
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def run_without_torch(statements: str) -> subprocess.CompletedProcess:
    return run_without_importing("torch", statements)
