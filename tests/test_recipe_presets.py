"""Recipes as files (cnnspec/pipeline/recipes.py, recipes/*.yaml).

The seed commands of docs/recipes.md used to repeat about 17 `-S` flags each; they are
now at most three overrides. The long commands, and the params.yaml they edited, are
frozen in tests/data/: each short command must give exactly the effective params its
long command gave, key by key, both computed with DVC's own override code.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cnnspec.errors import ParamsError
from cnnspec.pipeline.params import load_params
from tests.recipedocs import RECIPES, applied_params

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
LONG_COMMANDS = yaml.safe_load((DATA / "seed_commands_long.yaml").read_text(encoding="utf-8"))
SHORT = {recipe["name"]: recipe for recipe in RECIPES}


def flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "multipliers":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


CIFAR10_TRAINING_IMAGES = 50_000


def on_cifar10(params: dict) -> dict:
    """The params as CIFAR-10 runs them: data.val_split auto (the present default) is the
    frozen params' 0.02 there."""
    from cnnspec.data.datasets import val_fraction

    data = params["data"]
    if data["val_split"] == "auto" and data["dataset"] == "cifar10":
        data = {**data, "val_split": val_fraction("auto", CIFAR10_TRAINING_IMAGES)}
    return {**params, "data": data}


def long_params(name: str, folder: Path) -> dict:
    from dvc.utils.hydra import apply_overrides

    copy = folder / "long.yaml"
    shutil.copyfile(DATA / "params_before_recipes.yaml", copy)
    apply_overrides(copy, LONG_COMMANDS[name])
    return load_params(copy)


def test_every_long_command_has_its_short_one():
    assert set(LONG_COMMANDS) <= set(SHORT), sorted(set(LONG_COMMANDS) - set(SHORT))


@pytest.mark.parametrize("name", sorted(SHORT))
def test_short_command_has_at_most_three_overrides(name):
    recipe = SHORT[name]
    count = len(recipe["options"].set_param) + (1 if recipe["options"].name else 0)
    assert count <= 3, f"{name} (docs/recipes.md line {recipe['line']}): {count} overrides"


@pytest.mark.parametrize("name", sorted(LONG_COMMANDS))
def test_short_command_gives_the_long_commands_params(name, tmp_path):
    (tmp_path / "short").mkdir()
    short = flatten(on_cifar10(applied_params(SHORT[name], tmp_path / "short")))
    long = flatten(long_params(name, tmp_path))
    short.pop("recipe"), long.pop("recipe")
    differences = {key: (long.get(key, "<absent>"), short.get(key, "<absent>"))
                   for key in sorted(set(short) | set(long)) if short.get(key, "<absent>") != long.get(key, "<absent>")}
    assert not differences, f"{name}: key: (long command, short command): {differences}"
    assert len(long) > 50  # the whole params, not one section


def test_the_default_run_is_the_airbench_recipe():
    """`make run` (dvc repro with the committed params.yaml) trains speedrun94 with
    exactly what params.yaml held before recipes were files."""
    params = on_cifar10(load_params(REPO / "params.yaml"))
    before = load_params(DATA / "params_before_recipes.yaml")
    assert params["recipe"] == "airbench" and params["model"]["spec"] == "specs/speedrun94.yaml"
    assert {**params, "recipe": None} == {**before, "recipe": None}


# ---------------------------------------------------------------- the mechanism

def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory with its own recipes/ and specs/."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "recipes/base_one.yaml",
          "train:\n  epochs: 7\n  batch_size: 16\n  optimizer: {name: adam, lr: 0.01}\n")
    write(tmp_path, "recipes/child.yaml", "base: base_one\ntrain:\n  batch_size: 8\nevaluate: {tta: flip}\n")
    write(tmp_path, "specs/named.yaml", "name: n\nrecipe: child\nlayers: [flatten, {dense: num_classes}]\n")
    write(tmp_path, "specs/plain.yaml", "name: p\nlayers: [flatten, {dense: num_classes}]\n")
    return tmp_path


def test_auto_takes_the_specs_recipe_and_params_win(project):
    path = write(project, "params.yaml", "recipe: auto\nmodel: {spec: specs/named.yaml}\n"
                                         "train: {epochs: ~, batch_size: 64, optimizer: {lr: ~}}\n")
    params = load_params(path)
    assert params["recipe"] == "child"
    assert params["train"]["epochs"] == 7              # from base_one, through child
    assert params["train"]["batch_size"] == 64         # params.yaml wins
    assert params["train"]["optimizer"] == {**params["train"]["optimizer"], "name": "adam", "lr": 0.01}
    assert params["evaluate"]["tta"] == "flip"


def test_a_spec_without_a_recipe_gets_the_default_and_none_means_none(project):
    write(project, "recipes/keras_adam.yaml", "train: {optimizer: {name: adam, lr: 0.001}}\n")
    path = write(project, "params.yaml", "recipe: auto\nmodel: {spec: specs/plain.yaml}\n")
    assert load_params(path)["train"]["optimizer"]["lr"] == 0.001
    path = write(project, "params.yaml", "recipe: none\nmodel: {spec: specs/named.yaml}\ntrain: {epochs: ~}\n")
    params = load_params(path)
    assert params["recipe"] == "none" and params["train"]["epochs"] == 10  # the schema's default


def test_a_bad_value_in_a_recipe_names_the_recipe_file_and_line(project):
    write(project, "recipes/bad.yaml", "# comment\ntrain:\n  epochs: 3\n  batch_size: 0\n")
    path = write(project, "params.yaml", "recipe: bad\n")
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert str(error.value).startswith("recipes/bad.yaml:4:15: train.batch_size: 0 is less than the minimum of 1")
    write(project, "recipes/typo.yaml", "train:\n  optimizer: {lr: 0.1, momentun: 0.9}\n")
    with pytest.raises(ParamsError, match=r"^recipes/typo.yaml:2:\d+: train.optimizer.momentun: unknown key.*"
                                          r"\(did you mean 'momentum'\?\)"):
        load_params(write(project, "params.yaml", "recipe: typo\n"))
    # The same bad value written in params.yaml is params.yaml's.
    with pytest.raises(ParamsError, match=r"params.yaml: train.batch_size: 0 is less"):
        load_params(write(project, "params.yaml", "recipe: child\ntrain: {batch_size: 0}\n"))


@pytest.mark.parametrize("files, params_text, message", [
    ({}, "recipe: chlid\n", r"params.yaml: recipe: no recipe 'chlid' in recipes/ \(did you mean 'child'\?\)"),
    ({"specs/s.yaml": "name: s\nrecipe: nope\nlayers: [flatten, {dense: num_classes}]\n"},
     "recipe: auto\nmodel: {spec: specs/s.yaml}\n", r"^specs/s.yaml:2:9: recipe: no recipe 'nope'"),
    ({"recipes/loop.yaml": "base: loop\n"}, "recipe: loop\n", r"recipe bases loop: loop -> loop"),
    ({"recipes/data.yaml": "data: {val_split: 0.1}\n"}, "recipe: data\n",
     r"^recipes/data.yaml:1:1: data: a recipe holds only base, train, evaluate"),
    ({}, "recipe: auto\nmodel: {spec: specs/missing.yaml}\n",
     r"params.yaml: model.spec: specs/missing.yaml: no such file$"),
    ({"specs/inner/x.yaml": "name: x\nlayers: [flatten, {dense: num_classes}]\n"},
     "recipe: auto\nmodel: {spec: specs/inner}\n", r"params.yaml: model.spec: specs/inner: is a folder, not a file$"),
    # params.yaml gives these a value, which would silently win over the recipe's
    ({"recipes/seeded.yaml": "train:\n  epochs: 3\n  seed: 5\n"}, "recipe: seeded\n",
     r"^recipes/seeded.yaml:3:3: train.seed: set in params.yaml, not in a recipe"),
    ({"recipes/eval.yaml": "evaluate: {tta: flip, batch_size: 7}\n"}, "recipe: eval\n",
     r"^recipes/eval.yaml:1:23: evaluate.batch_size: set in params.yaml, not in a recipe"),
], ids=["unknown", "spec-names-unknown", "base-loop", "data-section", "missing-spec", "spec-is-a-folder", "run-key",
        "evaluate-batch"])
def test_recipe_mistakes_are_one_line_naming_the_place(project, files, params_text, message):
    for name, text in files.items():
        write(project, name, text)
    with pytest.raises(ParamsError, match=message) as error:
        load_params(write(project, "params.yaml", params_text))
    assert "\n" not in str(error.value)


def test_an_old_recipe_name_is_one_line_naming_the_new_one(project):
    with pytest.raises(ParamsError) as error:
        load_params(write(project, "params.yaml", "recipe: seed003\n"))
    assert str(error.value).endswith("params.yaml: recipe: recipe 'seed003' is now called 'adam_focal_balanced'")
    # a user's own file of that name still wins
    write(project, "recipes/seed003.yaml", "train: {epochs: 4}\n")
    assert load_params(write(project, "params.yaml", "recipe: seed003\n"))["train"]["epochs"] == 4


def test_every_renamed_recipe_names_a_shipped_one():
    from cnnspec.pipeline import recipes

    assert set(recipes.RENAMED.values()) <= set(recipes.available())
    assert not set(recipes.RENAMED) & {path.stem for path in recipes.SHIPPED.glob("*.yaml")}


def test_a_stage_that_reads_no_recipe_section_ignores_the_recipe(project):
    path = write(project, "params.yaml", "recipe: nope\ndata: {val_split: 0.2}\n")
    assert load_params(path, ["data"])["data"]["val_split"] == 0.2


def test_shipped_recipes_and_specs_all_resolve():
    """Every recipe file is valid params on its own, and every spec names one that exists."""
    from cnnspec.pipeline import recipes

    for name in recipes.available():
        assert load_params_for(name)["recipe"] == name
    for spec in sorted((REPO / "specs").glob("*.yaml")):
        named, _ = recipes.spec_recipe(spec)
        assert named is None or named in recipes.available(), f"{spec.name} names {named}"


def load_params_for(recipe: str) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_text(f"recipe: {recipe}\n", encoding="utf-8")
        return load_params(path)


def test_resolve_stage_writes_the_effective_params(tmp_path, monkeypatch):
    from stages.resolve import resolve

    monkeypatch.chdir(REPO)
    params_path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    assert "\n  spec: auto " in text
    params_path.write_text(text.replace("\n  spec: auto ", "\n  spec: specs/simcnn.yaml "), encoding="utf-8")
    resolve(params_path, tmp_path / "params.resolved.yaml", prepared=tmp_path / "no_prepared_data")
    written = yaml.safe_load((tmp_path / "params.resolved.yaml").read_text(encoding="utf-8"))
    assert written["recipe"] == "keras_adam"
    assert written["train"]["optimizer"]["name"] == "adam" and written["train"]["batch_size"] == 32
    assert None not in flatten(written).values()
