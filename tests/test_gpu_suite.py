"""benchmarks/gpu_suite.sh runs on a lent GPU machine, where every minute counts and
nothing can be fixed between steps. Its dry run lists each step's command; here each
Python step's options are parsed by its own script's parser (stopping right after), and
the specs, recipes and files it names must exist, so a renamed option or file fails on
a CPU instead of in a device session."""
from __future__ import annotations

import argparse
import os
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "benchmarks" / "gpu_suite.sh"


def dry_run_steps() -> dict[str, list[str]]:
    listed = subprocess.run(["bash", str(SUITE), "--dry-run"], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PYTHON": "python3"}, check=True).stdout
    steps = {}
    for line in listed.splitlines():
        name, *command = shlex.split(line)
        steps[name] = command
    return steps


STEPS = dry_run_steps()
PYTHON_STEPS = sorted(name for name, command in STEPS.items() if command[0] == "python3")


class Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace):
        super().__init__()
        self.namespace = namespace


def parse_like_the_suite(command: list[str], monkeypatch) -> argparse.Namespace:
    """Runs `python3 SCRIPT ARGS` or `python3 -m MODULE ARGS` in this process up to
    its first parse_args, and returns what that parsed."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.chdir(REPO)
    if command[1] == "-m":
        target, arguments = command[2], command[3:]
        monkeypatch.setattr(sys, "argv", [target, *arguments])
        run = lambda: runpy.run_module(target, run_name="__main__", alter_sys=True)  # noqa: E731
    else:
        target, arguments = command[1], command[2:]
        assert (REPO / target).is_file(), f"{target} is not in the repository"
        monkeypatch.setattr(sys, "argv", [target, *arguments])
        run = lambda: runpy.run_path(str(REPO / target), run_name="__main__")  # noqa: E731
    with pytest.raises(Parsed) as parsed:
        run()
    return parsed.value.namespace


def test_the_dry_run_lists_every_step_and_runs_none(tmp_path):
    assert len(STEPS) >= 12 and "cuda_tests" in STEPS and "machine" in STEPS
    assert "dvc_repro" in STEPS and "predict_vs_onnxruntime" in STEPS
    assert len(PYTHON_STEPS) == len(STEPS) - 1  # all but `machine`, which is bash
    assert not any(tmp_path.iterdir())


def test_the_suite_without_an_output_folder_says_how_to_call_it():
    done = subprocess.run(["bash", str(SUITE)], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "usage: bash benchmarks/gpu_suite.sh OUT_FOLDER" in done.stderr


@pytest.mark.parametrize("step", [name for name in PYTHON_STEPS if name != "cuda_tests"])
def test_each_step_s_options_are_its_script_s(step, monkeypatch):
    command = STEPS[step]
    namespace = parse_like_the_suite(command, monkeypatch)
    if "--device" in command:
        assert namespace.device == "cuda"
    for option, value in zip(command, command[1:]):
        if option == "--spec":
            assert (REPO / value).is_file(), f"{step}: --spec {value} does not exist"
        if option == "--recipe":
            assert (REPO / "recipes" / f"{value}.yaml").is_file(), f"{step}: no recipe {value}"
    for model in getattr(namespace, "models", None) or []:
        assert (REPO / "specs" / f"{model}.yaml").is_file(), f"{step}: no spec for model {model}"


def test_the_cuda_tests_step_names_the_cuda_test_file():
    command = STEPS["cuda_tests"]
    assert command[1:3] == ["-m", "pytest"]
    files = [argument for argument in command[3:] if not argument.startswith("-")]
    assert files and all((REPO / name).is_file() for name in files)
