"""Did the run learn? One verdict for train and evaluate, so a chance-level result is
never silent.

A run did not learn when its accuracy is within a small margin of chance for its
class count (1/classes), or when its training loss never fell below the first
epoch's. Both stages print one warning line with the likely causes and record
`learned` in their metrics, so `dvc exp show` and the PR comment show it.
"""
from __future__ import annotations

import sys
from pathlib import Path

from cnnspec.atomic import write_json
from cnnspec.regular_files import read_json


def chance(num_classes: int) -> float:
    return 1.0 / max(1, num_classes)


def margin(num_classes: int) -> float:
    """How close to chance counts as chance: 5 points, or half of chance when chance is
    smaller (0.15 for 10 classes, 0.015 for 100, 0.55 for 2)."""
    return min(0.05, chance(num_classes) / 2)


def at_chance(accuracy: float, num_classes: int) -> bool:
    return accuracy <= chance(num_classes) + margin(num_classes)


FEW_IMAGES = 30  # an accuracy on fewer images than this says little: the warning says so


def verdict(num_classes: int, accuracy: float | None = None, accuracy_name: str = "accuracy",
            train_losses: list[float] | None = None, images: int | None = None) -> tuple[bool, str]:
    """(learned, reason it did not: '' when it did). `images`: how many the accuracy was
    measured on; under FEW_IMAGES the reason says they are too few to tell."""
    if accuracy is not None and at_chance(accuracy, num_classes):
        where = ("below chance" if accuracy < chance(num_classes)
                 else f"within {margin(num_classes):.3g} of chance")
        return False, (f"{accuracy_name} {accuracy:.4f} is {where} "
                       f"({chance(num_classes):.4f} for {num_classes} classes){few_images(images, accuracy_name)}")
    losses = [loss for loss in (train_losses or [])]
    if len(losses) >= 2 and min(losses[1:]) >= losses[0]:
        return False, (f"the training loss never fell below its first epoch's "
                       f"({losses[0]:.4f}; best later {min(losses[1:]):.4f})")
    return True, ""


def few_images(images: int | None, accuracy_name: str) -> str:
    """'; on 2 images, too few to tell ...' when the accuracy was measured on so few that
    chance and learning look alike (a first try on a dozen photos), else ''."""
    if images is None or images >= FEW_IMAGES:
        return ""
    split = accuracy_name.split()[0]
    more = {"val": " or a larger data.val_split", "test": " or a larger data.test_split"}.get(split, "")
    return f"; on {images} image{'' if images == 1 else 's'}, too few to tell (more images{more})"


def history_verdict(history: list[dict], num_classes: int, images: int | None = None) -> tuple[bool, str]:
    """The verdict on a training history (training.train's per-epoch records): the last
    epoch's validation accuracy (training accuracy without a validation split) and the
    training loss. `images`: the validation images (the training images without them)."""
    if not history:
        return True, ""
    last = history[-1]
    split = "val" if "val/accuracy" in last else "train"
    return verdict(num_classes, last[f"{split}/accuracy"], f"{split} accuracy",
                   [record["train/loss"] for record in history], images)


def warning_line(reason: str, params: dict | None = None) -> str:
    """The one line a stage prints when a run did not learn."""
    causes = []
    if params:
        recipe, spec = params.get("recipe"), _mapping(params, "model").get("spec")
        lr = _mapping(_mapping(params, "train"), "optimizer").get("lr")
        if isinstance(lr, (int, float)) and not isinstance(lr, bool):
            causes.append(f"train.optimizer.lr {lr:g} too high or too low for this network")
        if isinstance(recipe, str) and recipe and isinstance(spec, str) and spec:
            causes += _recipe_cause(recipe, spec)
    if not causes:
        causes = ["the learning rate (train.optimizer.lr)", "a recipe not meant for this spec"]
    causes.append("too few steps (train.epochs, data size)")
    return f"warning: this run did not learn: {reason}; likely causes: {'; '.join(causes)}"


def _mapping(params: dict, key: str) -> dict:
    """params[key] when it is a mapping, else {}: the params a checkpoint stores were written
    by the cnnspec that trained it, perhaps another version with other shapes of value."""
    value = params.get(key)
    return value if isinstance(value, dict) else {}


def _recipe_cause(recipe: str, spec) -> list[str]:
    """The recipe as a likely cause, with what to run instead: the spec's own recipe when it
    names one, else a recipe to pick (`recipe: auto` fell back to a default)."""
    named = _recipe_the_spec_names(spec)
    if recipe == named:
        return []
    if named:
        return [f"recipe {recipe!r} not meant for {spec}, which names {named!r} (-S recipe=auto uses it)"]
    return [f"recipe {recipe!r} not meant for {spec}, which names no recipe (set `recipe:` in the spec, "
            f"or pick one with -S recipe=NAME, docs/recipes.md)"]


def _recipe_the_spec_names(spec) -> str | None:
    from cnnspec.errors import CnnspecError
    from cnnspec.spec.reader import load_spec

    try:
        return load_spec(spec).recipe
    except (CnnspecError, OSError):  # the spec moved or changed since: the cause stays listed
        return None


def warn(reason: str, params: dict | None = None) -> None:
    print(warning_line(reason, params), file=sys.stderr, flush=True)


def record(metrics_path, learned: bool) -> None:
    """Add `train.learned` to DVCLive's metrics.json, if it exists (nested under `train`, so
    that its `dvc exp show` column does not collide with the headline's `learned`)."""
    path = Path(metrics_path)
    try:
        metrics = read_json(path)
    except ValueError:
        return
    if isinstance(metrics, dict):
        train = metrics.get("train") if isinstance(metrics.get("train"), dict) else {}
        write_json(path, {**metrics, "train": {**train, "learned": learned}})
