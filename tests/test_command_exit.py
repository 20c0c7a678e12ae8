"""A finished command leaves its last garbage to the operating system: interpreter
shutdown skips the final collection (0.5-0.9 s once torch is loaded, in every stage),
while a program that only imports cnnspec keeps Python's usual shutdown."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import sys
from cnnspec.errors import exit_on_user_error

class Cycle:
    def __del__(self):
        sys.stdout.write("collected at shutdown\\n")

def leave_a_cycle():
    cycle = Cycle()
    cycle.itself = cycle
    with open(sys.argv[2], "w") as file:
        file.write("written")

if sys.argv[1] == "command":
    exit_on_user_error(leave_a_cycle)()
else:
    leave_a_cycle()
print("returned")
"""


def run(kind: str, output: Path) -> str:
    result = subprocess.run([sys.executable, "-c", PROGRAM, kind, str(output)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60, check=True)
    return result.stdout


def test_a_command_skips_the_final_collection_and_a_library_user_does_not(tmp_path):
    assert run("command", tmp_path / "command.txt") == "returned\n"
    assert run("library", tmp_path / "library.txt") == "returned\ncollected at shutdown\n"
    assert (tmp_path / "command.txt").read_text() == "written"
