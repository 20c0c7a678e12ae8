"""A finished command leaves its last garbage to the operating system: interpreter
shutdown skips the final collection (0.5-0.9 s once torch is loaded, in every stage),
while a program that only imports cnnspec keeps Python's usual shutdown; a stage script
that finished ends without freeing its modules, after its threads, exit handlers and output."""
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


FINISHED_SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from cnnspec.errors import end_finished_script

folder, how = Path(sys.argv[1]), sys.argv[2]

class Kept:
    def __del__(self):
        (folder / "freed").write_text("the interpreter freed the modules")

kept = Kept()
atexit.register(lambda: (folder / "atexit").write_text("ran"))
if how == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), (folder / "thread").write_text("finished"))).start()
sys.stdout.write("no newline, still buffered")
if how == "profiled":
    sys.setprofile(lambda frame, event, arg: None)  # as `python -m cProfile` would
end_finished_script()
sys.setprofile(None)
sys.stdout.write(", then the usual exit")
"""


def finish(folder: Path, how: str) -> tuple[str, list[str]]:
    result = subprocess.run([sys.executable, "-c", FINISHED_SCRIPT, str(folder), how], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout, sorted(path.name for path in folder.iterdir())


def test_a_finished_script_runs_its_exit_handlers_and_flushes_its_output_but_frees_nothing(tmp_path):
    assert finish(tmp_path, "plain") == ("no newline, still buffered", ["atexit"])


def test_a_finished_script_keeps_the_usual_exit_while_a_thread_runs_or_a_profiler_watches(tmp_path):
    for how, made in (("thread", ["atexit", "freed", "thread"]), ("profiled", ["atexit", "freed"])):
        folder = tmp_path / how
        folder.mkdir()
        assert finish(folder, how) == ("no newline, still buffered, then the usual exit", made)


def test_the_help_names_the_streams_and_every_exit_status():
    from cnnspec.cli import build_parser

    help_text = " ".join(build_parser().format_help().split())
    assert "notes, errors and progress to stderr" in help_text
    for status in ("0 done", "1 failed", "2 bad arguments", "130 Ctrl-C", "143 SIGTERM"):
        assert status in help_text, status
