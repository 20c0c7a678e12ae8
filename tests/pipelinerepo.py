"""The DVC pipeline in a temporary repository: a copy of the working tree, commands
run with the venv first on PATH, and which stages a `dvc repro` ran."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
STAGES = ["download", "preprocess", "resolve", "train", "evaluate", "plot"]


def copy_working_tree(destination: Path) -> None:
    """Copy the files git would commit (tracked and untracked-not-ignored), so the
    test exercises the working tree as it is, then make it a fresh repository."""
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


def quick_training(params: dict) -> None:
    """One short, deterministic epoch on CPU: no compile, schedule, lookahead, smoothing or TTA."""
    params["train"].update(device="cpu", epochs=1, batch_size=64, precision="off", compile=False)
    params["train"]["optimizer"].update(name="adam", lr=0.003, weight_decay=0.0)
    params["train"]["scheduler"]["name"] = "none"
    params["train"]["lookahead"]["enabled"] = False
    params["train"]["loss"]["label_smoothing"] = 0.0
    params["evaluate"]["tta"] = "none"


def run(command, cwd, **kwargs):
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def ran_stages(output: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]
