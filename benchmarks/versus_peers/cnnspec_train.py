"""cnnspec: `cnnspec.training.loop.train`, called as stages/train.py calls it (resume
state and DVCLive log written every epoch, to a temporary folder)."""
from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.bench_loop_overhead import NO_EXTRAS, train_params
from benchmarks.versus_peers.data import ROOT, Task, synchronize
from cnnspec import build_model, load_spec
from cnnspec.training.loop import train


def cnnspec_model(task: Task) -> nn.Module:
    torch.manual_seed(task.seed)  # the initial weights, as stages/train.py seeds them
    return build_model(load_spec(ROOT / "specs" / f"{task.model}.yaml"), task.input_shape, len(task.classes))


def cnnspec_params(task: Task) -> dict:
    """params.yaml's train section turned into the shared recipe; with --recipes own the
    spec's own recipe as resolved for the task (own_recipes.cnnspec_recipe)."""
    if task.recipe is not None:
        return copy.deepcopy(task.recipe)
    return train_params(**{**NO_EXTRAS, "epochs": task.epochs, "batch_size": task.batch, "seed": task.seed,
                           "precision": "off", "channels_last": False, "deterministic": False,
                           "optimizer": {"name": "adam", "lr": task.lr, "betas": [0.9, 0.999], "weight_decay": 0.0},
                           "loss": {"name": "cross_entropy", "label_smoothing": 0.0},
                           "augment": {**NO_EXTRAS["augment"], "hflip": task.hflip}})


def train_with_cnnspec(model, data: dict, params: dict, device, folder: Path):
    """The train stage's call (stages/train.py): resume state and DVCLive log, each epoch."""
    return train(model, data, params, device, resume_path=folder / "resume" / "state.pt",
                 log_dir=folder / "metrics")


def run_cnnspec(task: Task) -> tuple[list[float], list[float]]:
    model = cnnspec_model(task)
    data = {"train_images": task.train_images, "train_labels": task.train_labels,
            "val_images": task.test_images, "val_labels": task.test_labels,  # validated every epoch
            "meta": {"dataset": "fashion-mnist", "classes": task.classes, "input_shape": list(task.input_shape),
                     "mean": task.mean, "std": task.std,
                     "counts": {"train": len(task.train_labels), "val": len(task.test_labels)}}}
    starts = []  # the loop calls model.start_epoch before each epoch: the end of the one before
    original_start_epoch = model.start_epoch

    def start_epoch(epoch):
        starts.append(time.perf_counter())
        original_start_epoch(epoch)

    model.start_epoch = start_epoch
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = train_with_cnnspec(model, data, cnnspec_params(task), task.device, Path(folder))
        synchronize(task.device)
        ended = time.perf_counter()
    ends = [moment - started for moment in starts[1:]] + [ended - started]
    if len(ends) != task.epochs:  # the loop stopped calling the hook: spread the time evenly
        ends = [(ended - started) * (epoch + 1) / task.epochs for epoch in range(task.epochs)]
    return ends, [record["val/accuracy"] for record in result.history]
