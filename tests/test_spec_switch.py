"""Switching only the architecture brings a recipe that trains it.

For every shipped spec that fits a CPU, the committed params.yaml gets exactly one
change, `-S model.spec=specs/X.yaml` (applied by DVC's own override code), and trains
on real Fashion-MNIST images. Only the test's budget is added: one epoch, the CPU (in
bf16 where it has bf16), a subset of the training images (`tests/fashion.py`) and a test
score without test-time augmentation (six forward passes per image for resnet18_cifar). Before
recipes were files, the same switch kept airbench's SGD lr 1.5 and simcnn ended at chance
level.

Accuracy is checked where a short run can show it: the test accuracy for networks whose
batch-norm statistics settle within the subset's few steps, the epoch's training
accuracy for all. (The Keras-style specs, ironhack_cnn and group3_cnn, use batch norm
momentum 0.01: their running statistics need a few hundred steps, a full epoch, before
test-time accuracy means anything.)
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cnnspec.pipeline.params import load_params
from tests.fashion import FASHION, write_subset

REPO = Path(__file__).resolve().parent.parent

# spec: (recipe it names, training images, test accuracy bar or None, training accuracy bar)
SWITCHES = {
    "simcnn": ("keras_adam", 2048, 0.5, 0.4),
    "ironhack_cnn": ("adam_plateau_early_stop", 1536, None, 0.35),
    "group3_cnn": ("adam_focal_balanced", 1024, None, 0.3),
    "resnet18_cifar": ("adam_early_stop", 1024, 0.3, 0.3),
    "speedrun94": ("airbench", 4096, None, 0.3),
    "small_images": ("small_images", 1024, 0.3, 0.4),  # model.spec: auto for own images; 20 steps
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)"),
]


@pytest.mark.parametrize("spec", sorted(SWITCHES))
def test_switching_only_the_spec_trains_it(spec, tmp_path, monkeypatch):
    from dvc.utils.hydra import apply_overrides

    from cnnspec.inference.evaluation import evaluate_checkpoint
    from stages.train import run

    recipe, images, test_bar, train_bar = SWITCHES[spec]
    monkeypatch.chdir(REPO)  # model.spec and recipes/ are read as `dvc repro` reads them
    params_path = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", params_path)
    apply_overrides(params_path, [f"model.spec=specs/{spec}.yaml"])   # the one change
    budget = ["train.epochs=1", "train.device=cpu", "train.cpu_precision=bf16", "evaluate.tta=none"]
    apply_overrides(params_path, budget)  # the test's budget
    params = load_params(params_path)
    assert params["recipe"] == recipe

    prepared = write_subset(tmp_path / "prepared", n_train=images, n_val=250, n_test=500)
    result = run(params_path, prepared, tmp_path / "model.pt", tmp_path / "resume.pt", tmp_path / "log")
    train_accuracy = result.history[-1]["train/accuracy"]
    assert train_accuracy >= train_bar, f"{spec}: training accuracy {train_accuracy:.3f} (chance 0.1)"
    if test_bar is not None:
        report, _, _ = evaluate_checkpoint(tmp_path / "model.pt", prepared, tta=params["evaluate"]["tta"],
                                           batch_size=500, device="cpu")
        assert report["accuracy"] >= test_bar, f"{spec}: test accuracy {report['accuracy']:.3f} (chance 0.1)"
