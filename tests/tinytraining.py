"""A tiny spec trained on tiny learnable data (3 classes, 8x8 images) in about a second:
the model, the options, the stage's inputs on disk, and a way to sabotage a forward pass.

    from tests.tinytraining import run_training, train_params
    result = run_training(train_params(epochs=2), tmp_path)
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

import cnnspec
from cnnspec.models.checkpoint import save_checkpoint
from cnnspec.pipeline.params import fill_defaults, load_schema
from cnnspec.training.loop import train
from tests.fakedata import prepared_data, write_fake_prepared

SPEC = """name: tiny
layers:
  - conv: {filters: 8, bias: false}
  - bn
  - activation: relu
  - dropout: 0.1
  - global_avg_pool
  - dense: {units: num_classes}
"""
CLASSES = ["cat", "dog", "ship"]


def tiny_data(n_train=48, n_val=24, seed=0) -> dict:
    """Learnable images: each class its own brightness, under noise."""
    return prepared_data(n_train, n_val, shape=(3, 8, 8), classes=CLASSES, seed=seed)


def train_params(**sections) -> dict:
    """Schema defaults, small sizes; keyword arguments replace or update sections."""
    schema = {"properties": {"train": load_schema()["properties"]["train"]}}
    base = fill_defaults({"train": {"epochs": 3, "batch_size": 16}}, schema)["train"]
    for key, value in sections.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    return base


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return cnnspec.build_model(cnnspec.parse_spec(SPEC, "tiny.yaml"), (3, 8, 8), 3)


def run_training(params, tmp_path=None, model=None, **kwargs):
    log_dir = None if tmp_path is None else tmp_path / "log"
    resume = None if tmp_path is None else tmp_path / "resume" / "state.pt"
    return train(model or tiny_model(), tiny_data(), params, "cpu", resume_path=resume,
                 log_dir=log_dir, fingerprint="f", **kwargs)


def Sabotage(model, at_call, action):
    """`model` with a forward hook that runs `action` on the output of its training
    forward number `at_call` (state_dict keys unchanged, so a resumed run can load it)."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == at_call:
                return action(output)
        return None

    model.register_forward_hook(hook)
    return model


def write_stage_inputs(folder: Path, **train_overrides):
    """What the train stage reads, in `folder`: data/prepared (the test split is the
    validation images), specs/tiny.yaml and params.yaml (cpu, 2 epochs, batch 16)."""
    write_fake_prepared(folder / "data" / "prepared", n_train=48, n_val=24, n_test=24, shape=(3, 8, 8),
                        classes=CLASSES)
    (folder / "specs").mkdir()
    (folder / "specs" / "tiny.yaml").write_text(SPEC)
    params = {"model": {"spec": "specs/tiny.yaml"},
              "train": {"device": "cpu", "epochs": 2, "batch_size": 16, **train_overrides}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def save_tiny_checkpoint(path: Path, meta: dict):
    """The tiny spec, untrained, saved as the train stage saves it for data described by
    `meta` (its classes, input_shape, mean and std); returns the model."""
    torch.manual_seed(0)
    spec = cnnspec.parse_spec(SPEC, "tiny.yaml")
    model = cnnspec.build_model(spec, tuple(meta["input_shape"]), len(meta["classes"]))
    save_checkpoint(path, model, spec, meta, {}, epoch=1, best_epoch=1)
    return model
