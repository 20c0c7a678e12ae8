"""The CPU speedrun's spec and recipe: specs/fashion_cpu.yaml names recipes/fashion_cpu.yaml,
so `-S model.spec=specs/fashion_cpu.yaml` is the one override, and the pair learns real
Fashion-MNIST images. Its times and full-data accuracies are figures printed by
benchmarks/fashion_time_to_accuracy.py (docs/benchmarks.md), never asserted here."""
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import fashion_time_to_accuracy as speedrun
from cnnspec.models.compiler import build_model

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC = REPO_ROOT / "specs" / "fashion_cpu.yaml"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_the_spec_picks_its_own_recipe_when_params_yaml_says_auto():
    params = speedrun.resolved_params(SPEC)
    assert params["recipe"] == "fashion_cpu"
    train = params["train"]
    assert (train["optimizer"]["name"], train["scheduler"]["name"]) == ("sgd", "onecycle")
    assert train["channels_last"] and train["lookahead"]["enabled"]
    assert train["loss"]["label_smoothing"] > 0 and train["augment"]["hflip"]
    # runs of 10 epochs or fewer learn faster than they overfit: batch 128, no translations
    assert (train["epochs"], train["batch_size"], train["augment"]["translate"]) == (10, 128, 0)
    assert params["evaluate"]["tta"] == "flip"


def test_the_one_minute_recipe_is_fashion_cpu_in_two_epochs():
    """`-S recipe=fashion_cpu_short` is `-S train.epochs=2`, nothing else."""
    full, short = speedrun.resolved_params(SPEC), speedrun.resolved_params(SPEC, "fashion_cpu_short")
    assert short["recipe"] == "fashion_cpu_short"
    assert short["train"] == {**full["train"], "epochs": 2}
    assert short["evaluate"] == full["evaluate"]


def test_the_spec_builds_for_fashion_mnist_with_batch_norm_after_each_pool():
    model = build_model(SPEC, (1, 28, 28), 10)
    logits = model.eval()(torch.zeros(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 100_000 < trainable < 400_000  # sized for a CPU: a few million multiply-adds per image


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_the_spec_and_recipe_learn_a_real_fashion_mnist_subset():
    """2,048 real training images, 2 epochs of the recipe at batch 64 (a full run uses
    128): test accuracy with the recipe's flip TTA far above chance (10%)."""
    data, test_images, test_labels = speedrun.fashion_data(FASHION, 0.02, 2048, 1000)
    params = speedrun.resolved_params(SPEC)
    params["train"].update(batch_size=64, device="cpu")
    run = speedrun.one_run(SPEC, data, test_images, test_labels, params, 2, torch.device("cpu"))
    assert np.isfinite(run.seconds) and run.cpu_seconds > 0
    assert run.accuracy >= 0.65, run
