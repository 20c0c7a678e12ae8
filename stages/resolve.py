"""Stage 3 of 6, resolve: write params.resolved.yaml, the params train and evaluate run with.

    python stages/resolve.py

params.yaml picks a spec (`model.spec: auto`: a small CNN for your own images, the
CIFAR speedrun for the built-ins) and a recipe (`recipe: auto` takes the one the spec
names) and sets what differs from it; this stage merges the two (cnnspec/pipeline/recipes.py),
fits the batch size to the prepared training set (cnnspec/pipeline/fit.py), checks the
result against the params schema, and writes it out whole, with the spec file's hash so
that an edit to the spec in use re-runs train. DVC tracks it as the train and evaluate
stages' params file, so `dvc params diff` and `dvc exp show` show the values a run
really used, not only the overrides. It prints one line saying what was chosen and why.
"""
import hashlib
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python stages/resolve.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from cnnspec.atomic import write_text
from cnnspec.errors import (
    CnnspecError,
    ParamsError,
    SpecError,
    end_finished_script,
    exit_on_user_error,
    listed_names,
)
from cnnspec.paths import PARAMS, PREPARED, RESOLVED_PARAMS
from cnnspec.pipeline.dvc_runs import busy_message, other_runs
from cnnspec.pipeline.fit import MIN_STEPS, fit_batch_size
from cnnspec.pipeline.params import OWN_IMAGE_DATASETS, load_params, read_yaml_mapping
from cnnspec.pipeline.recipes import spec_recipe
from cnnspec.pipeline.resolved import (
    RESOLVED_SECTIONS,
    STAMP,
    prepared_meta,
    prepared_train_images,
    resolution_stamp,
)
from cnnspec.spec.yamlio import read_bounded_text

HEADER = """\
# Written by `dvc repro` (stage resolve) from params.yaml and {recipe}:
# the params the train and evaluate stages ran with. Edit those, not this file.
"""


def check_class_weight_names(params: dict, classes: list, written: dict, params_name: str, recipe: str) -> None:
    """train.class_weights.multipliers names only classes of the prepared data; the error
    names the file the multipliers came from (params.yaml, or the recipe)."""
    multipliers = params["train"]["class_weights"]["multipliers"]
    own = ((written.get("train") or {}).get("class_weights") or {}).get("multipliers") is not None
    for name in multipliers:
        if name not in classes:
            raise ParamsError(f"{params_name if own else recipe}: train.class_weights.multipliers.{name}: "
                              f"unknown class {name!r}; the classes are {listed_names(classes)}")


def resolve(params_path=PARAMS, resolved_path=RESOLVED_PARAMS, prepared=PREPARED, log=print) -> dict:
    params = load_params(params_path, sections=RESOLVED_SECTIONS)
    stamp = resolution_stamp(params, prepared)
    data = load_params(params_path, sections=["data"])["data"]
    written = read_yaml_mapping(params_path)
    spec_path = Path(params["model"]["spec"])
    try:
        spec_text = read_bounded_text(spec_path)  # a FIFO or a huge file is refused, never read
    except SpecError as error:
        raise ParamsError(f"{params_path}: model.spec: {error}") from None
    params["model"]["spec_sha256"] = hashlib.sha256(spec_text.encode()).hexdigest()
    meta = prepared_meta(prepared)
    why = choice_line(params, data, written)
    if train_images := prepared_train_images(meta):
        set_by_user = (written.get("train") or {}).get("batch_size") is not None
        fit = fit_batch_size(params["train"]["batch_size"], train_images, set_by_user)
        params["train"] = {**params["train"], "batch_size": fit.batch_size}  # what fit_to_data gives a stage run alone
        shape = "x".join(str(n) for n in meta.get("input_shape", ()))  # absent when damaged
        steps = fit.steps(train_images)
        why += (f"; batch {fit.batch_size}: {steps} step{'' if steps == 1 else 's'} an epoch on {train_images:,} "
                f"training images" + (f" of {shape}" if shape else ""))
        if fit.capped_from is not None:
            whose = "the default" if params["recipe"] == "none" else "the recipe's"
            steps_before = train_images // fit.capped_from
            plural = "" if steps_before == 1 else "s"
            capped = (f"capped for at least {MIN_STEPS}" if steps >= MIN_STEPS else
                      f"capped to one image a step, still short of the {MIN_STEPS} steps aimed at: "
                      f"more images help")
            why += f" ({whose} batch {fit.capped_from} would give {steps_before} step{plural}; {capped})"
        warnings = fit.warnings
    else:
        warnings = []
    if meta is not None and meta.get("input_shape"):
        declared = check_input_fits(spec_path, meta, data, params_path)
        named = (written.get("model") or {}).get("spec", "auto") != "auto"  # auto's spec is made to adapt
        warnings = warnings + ([declared] if declared and named else [])
    recipe = "no recipe" if params["recipe"] == "none" else f"recipes/{params['recipe']}.yaml"
    if meta is not None and meta.get("classes"):
        check_class_weight_names(params, meta["classes"], written, str(params_path), recipe)
        if params["train"]["class_weights"]["mode"] == "none":
            warnings = warnings + imbalance_notes(prepared, meta["classes"])
    text = HEADER.format(recipe=recipe) + f"{STAMP}{stamp}\n" + yaml.safe_dump(params, sort_keys=False)
    write_text(resolved_path, text)
    log(why)
    for warning in warnings:
        log(warning)
    return params


IMBALANCE_RATIO = 3  # the commonest class's training images to the rarest's, from which it is said


def imbalance_notes(prepared, classes: list) -> list[str]:
    """One note when the training classes are far from even and nothing weighs them: the
    model then learns to favour the common classes, and the rare ones' recall suffers."""
    import numpy as np  # here: the stage's other work needs no numpy

    from cnnspec.data.integrity import load_npy

    try:
        labels = load_npy(Path(prepared) / "train_labels.npy")
        # a label far past the classes would have bincount allocate a count for each number below it
        if labels.dtype != np.int64 or labels.ndim != 1 or not len(labels) \
                or labels.min() < 0 or labels.max() >= len(classes):
            return []  # the train stage names what is wrong with the prepared data
        counts = np.bincount(np.asarray(labels), minlength=len(classes))
    except ValueError:
        return []
    if len(counts) != len(classes) or counts.min() == 0:
        return []
    rare, common = int(counts.argmin()), int(counts.argmax())
    ratio = counts[common] / counts[rare]
    if ratio < IMBALANCE_RATIO:
        return []
    return [f"note: the training classes are uneven: '{classes[rare]}' has {counts[rare]} images, "
            f"'{classes[common]}' {counts[common]} ({ratio:.0f}:1); -S train.class_weights.mode=balanced "
            "weighs each class's loss by its rarity"]


def fits(spec, input_shape, num_classes) -> str | None:
    """None when the spec takes `input_shape`, else shape inference's message."""
    from cnnspec.errors import SpecError
    from cnnspec.models.shapes import infer_shapes

    try:
        infer_shapes(spec, tuple(input_shape), num_classes)
        return None
    except SpecError as error:
        return str(error)


def smallest_size(spec, channels: int, num_classes: int, limit: int = 1024) -> int | None:
    """The smallest square image size the spec takes (shape inference only), or None."""
    low, high = 1, 1
    while fits(spec, (channels, high, high), num_classes) is not None:
        if high >= limit:
            return None
        low, high = high + 1, high * 2
    while low < high:  # fits at `high`, not below `low`
        middle = (low + high) // 2
        if fits(spec, (channels, middle, middle), num_classes) is None:
            high = middle
        else:
            low = middle + 1
    return high


def check_input_fits(spec_path, meta: dict, data: dict, params_path) -> str | None:
    """A spec that cannot take the prepared images stops here, before training, with the
    param to change and the smallest size the spec takes. One that declares another
    `input:` than the data's gets a note (the model is built for the data), returned."""
    from cnnspec.spec.reader import load_spec

    spec = load_spec(spec_path)
    channels, height, width = (int(v) for v in meta["input_shape"])
    num_classes = len(meta.get("classes") or []) or 10
    problem = fits(spec, (channels, height, width), num_classes)
    if problem is None:
        if spec.input is None or tuple(spec.input) == (channels, height, width):
            return None
        declared, data_shape = "x".join(map(str, spec.input)), f"{channels}x{height}x{width}"
        return (f"note: {spec_path} declares input {declared}, the prepared images are {data_shape}: the "
                f"model is built for the images (cnnspec summary {spec_path} --input {data_shape} "
                f"--classes {num_classes} shows it)")
    smallest = smallest_size(spec, channels, num_classes)
    if smallest is None:
        raise ParamsError(f"{params_path}: model.spec: {spec_path} cannot take {channels}x{height}x{width} "
                          f"images: {problem}")
    if data["dataset"] in OWN_IMAGE_DATASETS:
        raise ParamsError(f"{params_path}: data.image_size: {height}x{width} is too small for {spec_path}, "
                          f"which takes at least {smallest}x{smallest}: -S data.image_size=[{smallest},{smallest}] "
                          f"({problem})")
    raise ParamsError(f"{params_path}: model.spec: {spec_path} takes images of at least {smallest}x{smallest}, "
                      f"{data['dataset']}'s are {height}x{width}; pick another spec ({problem})")


def choice_line(params: dict, data: dict, written: dict) -> str:
    """`spec S (why), recipe R (why)`: what resolve picked, in one line."""
    spec = params["model"]["spec"]
    own = data["dataset"] in OWN_IMAGE_DATASETS
    asked_spec = (written.get("model") or {}).get("spec", "auto")
    spec_why = (f"model.spec: auto, for {'your own images' if own else 'a built-in dataset'} "
                f"(data.dataset: {data['dataset']})") if asked_spec == "auto" else "model.spec"
    asked_recipe = written.get("recipe", "none")
    recipe = params["recipe"]
    if asked_recipe != "auto":
        recipe_why = "recipe"
    elif spec_recipe(spec)[0] is not None:
        recipe_why = "recipe: auto, the one the spec names"
    else:
        recipe_why = "recipe: auto; the spec names none, so the default"
    return f"spec {spec} ({spec_why}), recipe {recipe} ({recipe_why})"


@exit_on_user_error
def main() -> None:
    runs = other_runs()
    if runs:  # two runs in one workspace overwrite each other's files: stop before that
        raise CnnspecError(busy_message(runs))
    resolve()


if __name__ == "__main__":
    main()
    end_finished_script()
