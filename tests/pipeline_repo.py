"""The DVC pipeline in a throwaway repository: a copy of this checkout (the working tree
as git would commit it), commands run in it with this venv's dvc, python and cnnspec
first on PATH (what `make run` sets up), and which stages a `dvc repro` ran."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
STAGES = ["download", "preprocess", "resolve", "train", "evaluate", "plot"]


def copy_checkout(destination: Path) -> Path:
    """The files git would commit (tracked and untracked-not-ignored), committed afresh,
    so a test exercises the working tree as it is."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO_ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "clone"]):
        subprocess.run(command, cwd=destination, check=True)
    return destination


def quick_training(params: dict) -> None:
    """One short, deterministic epoch on CPU: no compile, schedule, lookahead, smoothing or TTA."""
    params["train"].update(device="cpu", epochs=1, batch_size=64, precision="off", compile=False)
    params["train"]["optimizer"].update(name="adam", lr=0.003, weight_decay=0.0)
    params["train"]["scheduler"]["name"] = "none"
    params["train"]["lookahead"]["enabled"] = False
    params["train"]["loss"]["label_smoothing"] = 0.0
    params["evaluate"]["tta"] = "none"


def user_environment(**settings) -> dict:
    """This process's environment as a user's shell has it: this venv first on PATH, and
    Python writing its bytecode caches beside the modules (as it does unless told not to),
    so the stages leave cnnspec/__pycache__ in the repository as they do for users."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1", **settings)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def shell(command: str, cwd, timeout=600, check=True) -> subprocess.CompletedProcess:
    """Run a README line as a user types it (through bash), stdout and stderr together."""
    env = user_environment(PYTHONPATH="", COLUMNS="120",
                           OMP_NUM_THREADS="1")  # a shared CI core: two spinning threads are 20x slower than one
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    result.output = result.stdout + result.stderr
    if check:
        assert result.returncode == 0, f"{command} failed:\n{result.output}"
    return result


def run(command, cwd, **kwargs):
    result = subprocess.run(command, cwd=cwd, env=user_environment(), capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def ran_stages(output: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]
