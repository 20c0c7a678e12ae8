"""Every `dvc exp run` command in docs/recipes.md is real.

For each command: bash parses it (quoting, line continuations, brace expansion), DVC's
own Hydra code applies its `-S` overrides to a copy of params.yaml (keys must already
exist there), `load_params` accepts the result, `model.spec` names a spec that builds,
and the recipe trains two epochs (one for the biggest specs) on a few random images
through `cnnspec.training.loop.train` with exactly its options (only device, compile, epochs
and the data size are changed).
A failing recipe fails the test named after its `-n`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cnnspec.models.compiler import build_model
from cnnspec.spec.reader import load_spec
from cnnspec.training.loop import train
from tests.fakedata import CIFAR10_CLASSES, prepared_data
from tests.recipedocs import RECIPES, applied_params, shell_words, spec_override

REPO = Path(__file__).resolve().parent.parent

# What a dataset named in data.dataset looks like to the model: (C, H, W) and class names.
DATASET_SHAPES = {
    "cifar10": ((3, 32, 32), CIFAR10_CLASSES),
    "cifar100": ((3, 32, 32), [f"class{i}" for i in range(100)]),
    "mnist": ((1, 28, 28), [str(i) for i in range(10)]),
    "fashion-mnist": ((1, 28, 28), [f"class{i}" for i in range(10)]),
}
# Specs too big for two CPU epochs within the file's budget: one epoch (the per-epoch
# scheduler and early-stopping updates still run) and a `slow` mark. Fan and ResNet50 have
# 23-87M parameters; ResNet50V2 resizes to 224x224 inside the model, so it gets 2 images.
HEAVY_SPECS = {"fan.yaml": {"epochs": 1, "images": 4},
               "resnet50_transfer.yaml": {"epochs": 1, "images": 4},
               "resnet50v2_transfer.yaml": {"epochs": 1, "images": 2}}
LIGHT = {"epochs": 2, "images": 4}


# ---------------------------------------------------------------- tests

def test_recipes_doc_has_every_seed_system():
    specs = {Path(spec_override(r) or "").name for r in RECIPES}
    assert {"ironhack_cnn.yaml", "resnet18_cifar.yaml", "resnet50v2_transfer.yaml", "fan.yaml",
            "group3_cnn.yaml", "resnet50_transfer.yaml", "vgg16_transfer.yaml", "squeezenet.yaml",
            "simcnn.yaml", "speedrun94.yaml"} <= specs
    names = [r["name"] for r in RECIPES]
    assert len(names) == len(set(names)), "two recipes share one -n name"


def test_doc_parser_sees_quoting_and_rejects_unknown_keys(tmp_path):
    """The checks below can fail: an unquoted brace is expanded by bash, a typo'd key and
    an added key are refused, a sweep expands to one experiment per value."""
    assert "x={a:1,b:2}" not in shell_words("dvc exp run -S x={a:1,b:2}")
    assert shell_words("dvc exp run -S 'x={a:1,b:2}'")[3] == "x={a:1,b:2}"
    typo = {"name": "typo", "overrides": {"params.yaml": ["train.optimiser.lr=0.1"]}}
    with pytest.raises(AssertionError, match="train.optimiser.lr is not a key"):
        applied_params(typo, tmp_path)
    added = {"name": "added", "overrides": {"params.yaml": ["+train.new_knob=1"]}}
    with pytest.raises(AssertionError, match="train.new_knob is not a key"):
        applied_params(added, tmp_path)
    from dvc.utils.hydra import get_hydra_sweeps
    assert len(get_hydra_sweeps({"params.yaml": ["train.batch_size=32,64,128"]})) == 3


@pytest.mark.parametrize("recipe", RECIPES, ids=[r["name"] for r in RECIPES])
def test_recipe_is_valid_params(recipe, tmp_path):
    name = recipe["name"]
    assert recipe["options"].name, f"{name}: every recipe needs -n <name> (line {recipe['line']})"
    assert recipe["options"].queue or not recipe["sweep"], f"{name}: DVC runs sweeps only with --queue"
    params = applied_params(recipe, tmp_path)
    spec_path = REPO / params["model"]["spec"]
    assert spec_path.is_file(), f"{name}: model.spec {params['model']['spec']} does not exist"
    if name.startswith("seed"):
        # Keras seeds: none of the speed recipe's defaults may leak in from params.yaml.
        train_params = params["train"]
        leaks = {"lookahead": train_params["lookahead"]["enabled"],
                 "label_smoothing": train_params["loss"]["label_smoothing"],
                 "alternating_flip": train_params["augment"]["alternating_flip"],
                 "translate": train_params["augment"]["translate"],
                 "tta": params["evaluate"]["tta"] != "none"}
        assert not any(leaks.values()), f"{name}: inherits the speed recipe's {leaks}"


def with_marks(recipe):
    heavy = Path(spec_override(recipe) or "").name in HEAVY_SPECS
    return pytest.param(recipe, id=recipe["name"], marks=[pytest.mark.slow] if heavy else [])


@pytest.mark.parametrize("recipe", [with_marks(r) for r in RECIPES])
def test_recipe_trains(recipe, tmp_path):
    name = recipe["name"]
    params = applied_params(recipe, tmp_path)
    shape, classes = DATASET_SHAPES[params["data"]["dataset"]]
    spec = load_spec(REPO / params["model"]["spec"])
    budget = HEAVY_SPECS.get(Path(params["model"]["spec"]).name, LIGHT)
    options = {**params["train"], "epochs": budget["epochs"], "device": "cpu", "compile": False}
    # A handful of images: the batch size clamps to it, so each epoch is a single step.
    data = prepared_data(budget["images"], 2, shape=shape, classes=classes, learnable=False)
    torch.manual_seed(options["seed"])
    # Offline there are no ImageNet weights; the backbone's architecture is what matters here.
    model = build_model(spec, shape, len(classes), load_weights=False)
    before = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    try:
        result = train(model, data, options, "cpu")
    except Exception as error:  # name the recipe in the failure
        pytest.fail(f"{name} (docs/recipes.md line {recipe['line']}): training failed: "
                    f"{type(error).__name__}: {error}")
    assert len(result.history) == budget["epochs"], f"{name}: trained {len(result.history)} epochs"
    assert all(np.isfinite(r["train/loss"]) and np.isfinite(r["val/loss"]) for r in result.history), name
    after = result.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), f"{name}: no weight changed"
