"""Check that some cnnspec code runs without importing torch (which takes seconds)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_without_torch(statements: str) -> subprocess.CompletedProcess:
    """Run `statements` in a fresh interpreter at the repository root; it fails if
    they imported torch. Returns the finished process for further checks."""
    code = f"import sys; {statements}; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done
