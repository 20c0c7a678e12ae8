"""benchmarks/gpu_suite.sh runs on a lent GPU machine, where every minute counts and
nothing can be fixed between steps. Its dry run lists each step's command; here each
Python step's options are parsed by its own script's parser (stopping right after), and
the specs, recipes and files it names must exist, so a renamed option or file fails on
a CPU instead of in a device session."""
from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "benchmarks" / "gpu_suite.sh"


def dry_run_steps() -> dict[str, list[str]]:
    listed = subprocess.run(["bash", str(SUITE), "--dry-run"], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PYTHON": "python3"}, check=True).stdout
    steps = {}
    for line in listed.splitlines():
        name, cap, *command = shlex.split(line)
        assert int(cap) > 0
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


def test_the_suite_without_an_output_folder_or_with_a_wrong_option_says_how_to_call_it():
    for arguments in ([], ["--budget", "9m", "out"], ["--dryrun"]):
        done = subprocess.run(["bash", str(SUITE), *arguments], capture_output=True, text=True, timeout=30)
        assert done.returncode != 0 and done.stderr.count("\n") == 1, arguments
        assert "usage: bash benchmarks/gpu_suite.sh" in done.stderr or "--budget takes whole seconds" in done.stderr


def stand_in_python(folder: Path, body: str) -> dict:
    """An environment whose $PYTHON is a shell script: the suite's steps run it instead."""
    stand_in = folder / "python"
    stand_in.write_text(f"#!/bin/sh\n{body}\n")
    stand_in.chmod(0o755)
    return {**os.environ, "PYTHON": str(stand_in), "GPU_SUITE_MIN_STEP": "1"}


def test_a_step_past_the_budget_is_stopped_and_the_steps_after_it_are_skipped(tmp_path):
    env = stand_in_python(tmp_path, "sleep 60")
    started = time.monotonic()
    done = subprocess.run(["bash", str(SUITE), "--budget", "2", "--only", "cuda_tests,loop_overhead,throughput",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=50, env=env)
    assert done.returncode == 0 and time.monotonic() - started < 30
    summary = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    # bash's SECONDS counts whole clock seconds: the first step may find 1 s left instead of 2
    assert re.fullmatch(r"cuda_tests: stopped at its [12] s limit", summary[0]), summary
    assert [line.split(":")[0] for line in summary[1:]] == ["loop_overhead", "throughput"]
    assert all(": skipped, " in line for line in summary[1:])
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["steps.log", "summary.txt"]


def test_only_runs_the_named_steps_into_one_log(tmp_path):
    env = stand_in_python(tmp_path, 'echo "stand-in ran: $*"; echo "python is $(readlink -f "$(command -v python)")"')
    done = subprocess.run(["bash", str(SUITE), "--only", "predict,dvc_repro", "out", "/data/fm"],
                          capture_output=True, text=True, timeout=50, env=env, cwd=tmp_path)  # OUT from here
    assert done.returncode == 0
    assert [re.sub(r"after \d+ s", "after N s", line) for line in done.stdout.splitlines()] == [
        "predict: exit 0 after N s", "dvc_repro: exit 0 after N s"]
    log = (tmp_path / "out" / "steps.log").read_text()
    assert "stand-in ran: benchmarks/predict_throughput.py --device cuda --data /data/fm" in log
    assert "stand-in ran: -m benchmarks.versus_peers" in log and "--dvc-repro" in log
    assert "cuda_tests" not in log
    assert f"python is {tmp_path / 'python'}" in log  # what dvc.yaml's `python stages/...` runs


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


def test_the_wheels_to_carry_name_each_package_once_and_pinned():
    """pip refuses every wheel of one `pip download`/`pip install` call when two versions
    of a package are given (ml-dtypes and ml_dtypes are one package), and then nothing
    the suite needs is there."""
    lines = (REPO / "benchmarks" / "gpu_requirements.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    assert len(pins) > 50 and all(len(pin) == 2 and pin[1] for pin in pins)
    names = [re.sub(r"[-_.]+", "-", name).lower() for name, _ in pins]
    assert sorted({name for name in names if names.count(name) > 1}) == []
    assert {"dvc", "dvclive", "jsonschema", "ruamel-yaml-clib"} <= set(names)


def test_the_pipeline_benchmarks_copy_the_tree_without_git_too():
    # a lent machine's copy may have no .git: the fallback walk must find what git lists
    import subprocess

    from benchmarks.versus_peers.pipeline import ROOT, made_here

    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    walked = {str(path.relative_to(ROOT)) for path in ROOT.rglob("*")
              if path.is_file() and not made_here(path.relative_to(ROOT).parts)}
    assert set(filter(None, listed)) <= walked
    assert not any(name.startswith((".venv/", ".git/", "models/model", ".dvc/cache/")) for name in walked)


def test_the_dvc_repro_benchmark_runs_dvc_through_its_own_interpreter():
    source = (REPO / "benchmarks" / "versus_peers" / "pipeline.py").read_text()
    assert '[sys.executable, "-m", "dvc", "repro"]' in source and 'os.environ.get("PYTHONPATH")' in source
