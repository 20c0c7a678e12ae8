"""`python -m benchmarks.versus_peers ...` from the repository root (or
`python benchmarks/versus_peers ...`): see the package's docstring."""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a folder: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.versus_peers.cli import main

main()
