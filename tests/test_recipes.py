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

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnspec.models.compiler import build_model
from cnnspec.pipeline.params import load_params
from cnnspec.spec.reader import load_spec
from cnnspec.training.loop import train
from tests.fakedata import CIFAR10_CLASSES

REPO = Path(__file__).resolve().parent.parent
RECIPES_DOC = REPO / "docs" / "recipes.md"
PARAMS = REPO / "params.yaml"

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


# ---------------------------------------------------------------- reading the doc

def code_blocks(markdown: str) -> list[tuple[int, str]]:
    """(first line number, text) of every fenced code block."""
    blocks, lines, start, inside = [], markdown.splitlines(), 0, False
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if inside:
                blocks.append((start, "\n".join(lines[start:number - 1])))
            inside, start = not inside, number
    return blocks


def shell_words(command: str) -> list[str]:
    """The arguments bash would hand `dvc` for this command line."""
    script = 'dvc() { printf "%s\\0" "$@"; }\n' + command
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return out.stdout.split("\0")[:-1]


def exp_run_commands(markdown: str) -> list[tuple[int, str]]:
    """(line, command text) of every `dvc exp run` command, continuation lines joined."""
    commands = []
    for start, block in code_blocks(markdown):
        pending, first = "", 0
        for number, line in enumerate(block.splitlines(), start + 1):
            first = first or number
            pending += line.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            if pending.strip().startswith("dvc exp run"):
                commands.append((first, pending.strip()))
            pending, first = "", 0
    return commands


def parse_exp_run(words: list[str]) -> argparse.Namespace:
    """The `dvc exp run` options these recipes may use; anything else is an error."""
    assert words[:2] == ["exp", "run"], words
    parser = argparse.ArgumentParser(prog="dvc exp run", add_help=False, exit_on_error=False)
    parser.add_argument("-n", "--name")
    parser.add_argument("-S", "--set-param", dest="set_param", action="append", default=[])
    parser.add_argument("--queue", action="store_true")
    options, unknown = parser.parse_known_args(words[2:])
    if unknown:
        raise ValueError(f"unexpected arguments {unknown}")
    return options


def load_recipes() -> list[dict]:
    """One entry per experiment the doc's commands would run (a sweep gives several)."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps, to_hydra_overrides

    recipes = []
    for line, command in exp_run_commands(RECIPES_DOC.read_text(encoding="utf-8")):
        words = shell_words(command)
        options = parse_exp_run(words)
        name = options.name or f"line {line}"
        path_overrides = to_path_overrides(options.set_param)
        is_sweep = any(o.is_sweep_override() for o in to_hydra_overrides(path_overrides.get("params.yaml", [])))
        sweeps = get_hydra_sweeps(path_overrides) if is_sweep else [path_overrides]
        for index, sweep in enumerate(sweeps, 1):
            recipes.append({"name": f"{name}-{index}" if is_sweep else name, "line": line,
                            "options": options, "overrides": sweep, "sweep": is_sweep})
    return recipes


def spec_override(recipe) -> str | None:
    """The recipe's `-S model.spec=...` value, if it sets one."""
    for override in recipe["overrides"].get("params.yaml", []):
        if override.startswith("model.spec="):
            return override.split("=", 1)[1]
    return None


RECIPES = load_recipes() if RECIPES_DOC.is_file() else []


# ---------------------------------------------------------------- applying one recipe

def has_key(params: dict, dotted: str) -> bool:
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def applied_params(recipe: dict, folder: Path) -> dict:
    """params.yaml after the recipe's overrides, as DVC writes it, read by load_params."""
    from dvc.utils.hydra import apply_overrides, to_hydra_overrides

    name, overrides = recipe["name"], recipe["overrides"]
    assert set(overrides) <= {"params.yaml"}, f"{name}: -S may only edit params.yaml, not {sorted(overrides)}"
    original = load_params(PARAMS)
    for override in to_hydra_overrides(overrides.get("params.yaml", [])):
        key = override.key_or_group
        assert not override.is_delete(), f"{name}: deletes {key}"
        assert has_key(original, key), f"{name}: -S {override.input_line}: {key} is not a key of params.yaml"
    copy = folder / "params.yaml"
    shutil.copyfile(PARAMS, copy)
    apply_overrides(copy, overrides.get("params.yaml", []))
    return load_params(copy)


def tiny_data(shape, classes, n_train: int, n_val: int, seed: int = 0) -> dict:
    """load_prepared's dict of random uint8 images, every class present in training."""
    rng = np.random.default_rng(seed)

    def split(count):
        labels = np.arange(count) % len(classes)
        return rng.integers(0, 256, size=(count, *shape), dtype=np.uint8), labels.astype(np.int64)

    train_images, train_labels = split(n_train)
    val_images, val_labels = split(n_val)
    meta = {"dataset": "tiny", "classes": list(classes), "input_shape": list(shape),
            "mean": [0.5] * shape[0], "std": [0.25] * shape[0],
            "counts": {"train": n_train, "val": n_val, "test": 0}}
    return {"train_images": train_images, "train_labels": train_labels, "val_images": val_images,
            "val_labels": val_labels, "test_images": val_images[:0], "test_labels": val_labels[:0],
            "meta": meta}


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
    data = tiny_data(shape, classes, n_train=budget["images"], n_val=2)
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
