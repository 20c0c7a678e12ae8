"""`make lint` (ruff) checks every Python file the repository tracks: an exclude pattern
that matches more than the DVC output folders it means (`models` once matched
cnnspec/models/ too) would silently leave code unchecked."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUFF = Path(sys.executable).parent / "ruff"


def test_ruff_checks_every_tracked_python_file():
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    shown = subprocess.run([str(RUFF), "check", "--show-files", "."], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout
    checked = {str(Path(line.strip()).resolve().relative_to(ROOT)) for line in shown.splitlines()
               if line.strip().endswith(".py")}
    assert len(tracked) > 150
    assert sorted(set(tracked) - checked) == []
