"""The whole pipeline, end to end: `dvc repro` in a copy of this repository on the
task's images, against the train stage's own training time."""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.versus_peers.cnnspec_train import cnnspec_params
from benchmarks.versus_peers.data import ROOT, BenchmarkMismatch, Task
from cnnspec.data.datasets import get_dataset
from stages.train import FIRST_STEP_AND_REST


def made_here(parts: tuple) -> bool:
    """A path of what runs make (venvs, caches, DVC's outputs and cache), not of the tree."""
    return bool({".git", ".venv", "__pycache__", ".whl", ".fashion", ".hypothesis", ".pytest_cache", ".ruff_cache",
                 ".benchmarks"} & set(parts)) or \
        parts[:2] in ((".dvc", "cache"), (".dvc", "tmp")) or \
        (parts[0] in ("data", "models", "metrics") and parts[-1] != ".gitignore")


def copy_working_tree(destination: Path) -> None:
    """The files git would commit, in a fresh repository (as the end-to-end test does)."""
    import shutil
    import subprocess

    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=ROOT, capture_output=True)
    if listed.returncode == 0:
        names = list(filter(None, listed.stdout.decode().split("\0")))
    else:  # a copy without .git (a lent machine's): the tree less what the pipeline makes
        names = [str(path.relative_to(ROOT)) for path in ROOT.rglob("*")
                 if path.is_file() and not made_here(path.relative_to(ROOT).parts)]
    for name in names:
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=bench", "-c", "user.email=bench@cnnspec.invalid", "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=destination, check=True)


def write_fashion_subset(task: Task, folder: Path) -> None:
    """The task's training and test images as Fashion-MNIST's four idx .gz files, so
    that the pipeline downloads, prepares and trains exactly what the other runs train."""
    import gzip

    arrays = {"train-images-idx3-ubyte.gz": (task.train_images[:, 0], 0x803),
              "train-labels-idx1-ubyte.gz": (task.train_labels, 0x801),
              "t10k-images-idx3-ubyte.gz": (task.test_images[:, 0], 0x803),
              "t10k-labels-idx1-ubyte.gz": (task.test_labels, 0x801)}
    for name, (array, magic) in arrays.items():
        header = np.array([magic, *array.shape], dtype=">u4").tobytes()
        with gzip.open(folder / name, "wb") as file:
            file.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


# What `dvc repro` may add to the train stage's training, as a share of it
PIPELINE_GOAL = 0.10
RUNNING_STAGE = re.compile(r"Running stage '([^']+)'")


def dvc_repro(model: str, task: Task) -> dict:
    """Wall seconds of `dvc repro` (download from a local folder holding the task's
    images as Fashion-MNIST files, preprocess without a validation split, train with the
    shared recipe, evaluate on the test images, plot) in a copy of this repository, and
    the train stage's own training seconds: the difference is what the pipeline adds.
    The stages run with this process's torch thread count (OMP_NUM_THREADS)."""
    import subprocess

    import yaml

    from cnnspec.data.download import md5_of

    with tempfile.TemporaryDirectory() as repo, tempfile.TemporaryDirectory() as images:
        repo, images = Path(repo), Path(images)
        copy_working_tree(repo)
        write_fashion_subset(task, images)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        md5 = {name: md5_of(images / name) for name in get_dataset("fashion-mnist").files}
        params["data"].update({"dataset": "fashion-mnist", "url": images.resolve().as_uri() + "/",
                               "md5": md5, "val_split": 0.0})
        params["model"]["spec"] = f"specs/{model}.yaml"
        params["train"] = {**cnnspec_params(task), "device": str(task.device)}
        params["evaluate"]["tta"] = "none"
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        # dvc through this interpreter, and PYTHONPATH kept: where the packages were installed
        # with pip --target (the GPU suite), neither a `dvc` script on PATH nor the site folder
        # without PYTHONPATH would find them
        python_path = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                   DVC_NO_ANALYTICS="1", PYTHONPATH=python_path, OMP_NUM_THREADS=str(torch.get_num_threads()))
        # Python writes its bytecode caches, as on a user's machine: the first stage to import
        # a cnnspec module compiles it once for the rest (some machines switch this off)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        started = time.perf_counter()
        output, stage_starts = [], []  # (stage, seconds since the start) as DVC announces each
        with subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as running:
            for line in running.stdout:
                output.append(line)
                if announced := RUNNING_STAGE.search(line):
                    stage_starts.append((announced[1], time.perf_counter() - started))
        seconds = time.perf_counter() - started
        output = "".join(output)
        if running.returncode != 0:
            raise BenchmarkMismatch(f"dvc repro failed:\n{output[-4000:]}")
        metrics = json.loads((repo / "metrics" / "eval.json").read_text())
    times = FIRST_STEP_AND_REST.search(output)
    train_seconds = float(times[1]) + float(times[2]) if times else None
    ends = [moment for _, moment in stage_starts[1:]] + [seconds]
    stages = {"dvc's start": round(stage_starts[0][1], 2) if stage_starts else None,
              **{stage: round(end - start, 2) for (stage, start), end in zip(stage_starts, ends)}}
    added = None if train_seconds is None else (seconds - train_seconds) / train_seconds
    return {"model": model, "seconds": seconds, "train_seconds": train_seconds, "stages": stages,
            "added_share": added, "goal_met": None if added is None else added <= PIPELINE_GOAL,
            "test_accuracy": metrics.get("accuracy"), "train_images": len(task.train_labels),
            "test_images": len(task.test_labels), "epochs": task.epochs, "batch": task.torch_batch,
            "threads": torch.get_num_threads()}
