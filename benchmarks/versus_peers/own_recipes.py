"""`--recipes own`: each framework trains the same network with its own idiomatic recipe.

  cnnspec    the spec's own recipe, resolved as the pipeline's resolve stage resolves it
             (`load_params` on a params.yaml naming the spec, then `fit_to_data`), with
             --epochs as train.epochs and channels-last on;
  lightning  what Lightning expresses of that recipe without custom code: the torch
             optimizer, OneCycleLR stepped every batch, CrossEntropyLoss(label_smoothing),
             torchvision transforms in the Dataset, Trainer(precision="bf16-mixed") where
             the recipe autocasts and the CPU has bf16 instructions;
  plain      the same as Lightning in fp32 on a CPU (torchvision's reference script
             autocasts on CUDA only), NCHW;
  keras      Adam() with Keras' defaults, batch --batch, the seeds' callbacks
             ReduceLROnPlateau and EarlyStopping on val_loss, no augmentation.
Left out of Lightning and plain, since neither expresses them without custom code:
lookahead, EMA and the channels-last layout. Test-time augmentation is used by none of
the four: it belongs to cnnspec's evaluate stage, not to the per-epoch test evaluation
that is timed here."""
from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch
import yaml

from benchmarks.versus_peers.data import ROOT, BenchmarkMismatch, Task
from cnnspec.pipeline.fit import fit_to_data
from cnnspec.pipeline.params import load_params, read_yaml_mapping
from cnnspec.pipeline.resolved import RESOLVED_SECTIONS
from cnnspec.training.device import cpu_has_bf16

RECIPE_MODES = ("shared", "own")
KERAS_PLATEAU = {"monitor": "val_loss", "factor": 0.5, "patience": 2}  # the seeds' callbacks
KERAS_EARLY_STOPPING = {"monitor": "val_loss", "patience": 3, "restore_best_weights": True}
TORCH_OPTIMIZERS = ("sgd", "adam", "adamw")
TORCH_SCHEDULES = ("none", "onecycle")


def resolve_own_recipe(model: str, train_images: int) -> dict:
    """The params the train stage would run `specs/<model>.yaml` with: params.yaml (its
    `recipe: auto`, so the spec's recipe) resolved by `load_params`, the function the
    resolve stage calls, then the batch fitted to `train_images` by `fit_to_data`, as
    the resolve stage fits it. Returns the resolved sections (recipe, model, train,
    evaluate)."""
    params = json.loads(json.dumps(read_yaml_mapping(ROOT / "params.yaml")))
    params["model"]["spec"] = str(ROOT / "specs" / f"{model}.yaml")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        resolved = load_params(path, sections=RESOLVED_SECTIONS)
        resolved["train"] = fit_to_data(resolved["train"], train_images, path)
    return resolved


def cnnspec_recipe(resolved: dict, epochs: int, seed: int) -> dict:
    """The resolved train section as cnnspec trains it here: --epochs epochs, the
    benchmark's seed, channels-last on."""
    return {**copy.deepcopy(resolved["train"]), "epochs": epochs, "seed": seed, "channels_last": True}


def check_torch_expressible(recipe: dict, model: str) -> None:
    """Stops before training when the recipe needs more than the Lightning and plain
    translations do (they would then train another recipe than the one they print)."""
    problems = []
    if recipe["optimizer"]["name"] not in TORCH_OPTIMIZERS:
        problems.append(f"optimizer {recipe['optimizer']['name']}")
    if recipe["scheduler"]["name"] not in TORCH_SCHEDULES:
        problems.append(f"scheduler {recipe['scheduler']['name']}")
    if recipe["loss"]["name"] != "cross_entropy":
        problems.append(f"loss {recipe['loss']['name']}")
    if recipe["early_stopping"]["enabled"]:
        problems.append("early stopping")
    if recipe["class_weights"]["mode"] != "none" or recipe["class_weights"]["multipliers"]:
        problems.append("class weights")
    augment = recipe["augment"]
    problems += [name for name in ("alternating_flip", "cutout") if augment[name]]
    if problems:
        raise BenchmarkMismatch(f"{model}: --recipes own translates for Lightning and plain only "
                                f"{'/'.join(TORCH_OPTIMIZERS)}, schedules {'/'.join(TORCH_SCHEDULES)}, "
                                f"cross-entropy, flips and translations; its recipe has {', '.join(problems)}")


def torch_optimizer(parameters, recipe: dict, total_steps: int):
    """(optimizer, per-step scheduler or None) as a Lightning or torchvision-style script
    writes the recipe: one parameter group, OneCycleLR over the whole run with the
    recipe's warm-up and without momentum cycling (cnnspec's onecycle keeps the momentum)."""
    options = recipe["optimizer"]
    name = options["name"]
    if name == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=options["lr"], momentum=options["momentum"],
                                    nesterov=bool(options["nesterov"]) and options["momentum"] > 0,
                                    weight_decay=options["weight_decay"])
    else:
        kind = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        optimizer = kind(parameters, lr=options["lr"], betas=tuple(options["betas"]),
                         weight_decay=options["weight_decay"])
    schedule = recipe["scheduler"]
    if schedule["name"] == "none":
        return optimizer, None
    warmup = schedule["warmup_epochs"]  # < 1: a fraction of the run (pct_start); else epochs
    pct_start = warmup if warmup < 1 else warmup / recipe["epochs"]
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=options["lr"], total_steps=total_steps, pct_start=min(pct_start, 1.0),
        cycle_momentum=False)


def torch_augment(recipe: dict, size: tuple[int, int]):
    """The recipe's flips and translations as torchvision transforms on a normalized
    image tensor (None when it has none): a translation of up to t pixels with reflect
    padding is RandomCrop(size, padding=t, padding_mode="reflect")."""
    import torchvision.transforms as transforms

    augment, steps = recipe["augment"], []
    if augment["translate"]:
        steps.append(transforms.RandomCrop(size, padding=augment["translate"], padding_mode="reflect"))
    if augment["crop_padding"]:
        steps.append(transforms.RandomCrop(size, padding=augment["crop_padding"]))
    if augment["hflip"]:
        steps.append(transforms.RandomHorizontalFlip())
    if augment["vflip"]:
        steps.append(transforms.RandomVerticalFlip())
    return transforms.Compose(steps) if steps else None


def autocast_wanted(recipe: dict, device: torch.device) -> str:
    """bf16 / fp16 / off: what the recipe asks of this device (a CPU only where it has
    bf16 instructions, as cnnspec's loop decides)."""
    if device.type == "cpu":
        return "bf16" if recipe["cpu_precision"] == "bf16" and cpu_has_bf16() else "off"
    return recipe["precision"]


def lightning_precision(recipe: dict, device: torch.device) -> str:
    return {"bf16": "bf16-mixed", "fp16": "16-mixed", "off": "32-true"}[autocast_wanted(recipe, device)]


def plain_autocast(recipe: dict, device: torch.device):
    """The plain script's autocast dtype: the recipe's on CUDA (torchvision's reference
    --amp), none on a CPU."""
    if device.type != "cuda":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast_wanted(recipe, device))


# ---------------------------------------------------------------- what each framework ran, in words

def _optimizer_words(options: dict) -> str:
    if options["name"] == "sgd":
        nesterov = " nesterov" if options["nesterov"] and options["momentum"] > 0 else ""
        return (f"SGD lr {options['lr']:g} momentum {options['momentum']:g}{nesterov} "
                f"weight decay {options['weight_decay']:g}")
    betas = "/".join(f"{beta:g}" for beta in options["betas"])
    return f"{options['name'].capitalize()} lr {options['lr']:g} betas {betas} weight decay {options['weight_decay']:g}"


def _augment_words(recipe: dict, torchvision: bool, size: int = 0) -> str:
    augment = recipe["augment"]
    if torchvision:
        words = []
        if augment["translate"]:
            words.append(f"RandomCrop({size}, padding={augment['translate']}, padding_mode='reflect')")
        if augment["crop_padding"]:
            words.append(f"RandomCrop({size}, padding={augment['crop_padding']})")
        words += [name for key, name in (("hflip", "RandomHorizontalFlip"), ("vflip", "RandomVerticalFlip"))
                  if augment[key]]
        return " + ".join(words) + " in the Dataset" if words else "no augmentation"
    words = [name for key, name in (("hflip", "random flips"), ("alternating_flip", "alternating flips"),
                                    ("vflip", "vertical flips")) if augment[key]]
    if augment["translate"]:
        words.append(f"{augment['translate']}-pixel translations (reflect)")
    if augment["crop_padding"]:
        words.append(f"random crops after {augment['crop_padding']}-pixel zero padding")
    if augment["cutout"]:
        words.append(f"cutout {augment['cutout']}")
    return " + ".join(words) or "no augmentation"


def _schedule_words(recipe: dict, torch_class: bool) -> str:
    schedule = recipe["scheduler"]
    if schedule["name"] == "none":
        return "no schedule"
    if torch_class:
        warmup = schedule["warmup_epochs"]
        pct_start = warmup if warmup < 1 else warmup / recipe["epochs"]
        return f"OneCycleLR(pct_start={pct_start:g}, cycle_momentum=False) stepped every batch"
    warmup = schedule["warmup_epochs"]
    return f"{schedule['name']} (warm-up {f'{warmup:g} of the run' if warmup < 1 else f'{warmup:g} epochs'})"


def recipe_lines(task: Task) -> dict[str, str]:
    """One line per framework: the recipe it runs in this task."""
    if task.recipe is None:
        shared = (f"Adam lr {task.lr:g} betas 0.9/0.999 eps 1e-8, no schedule, cross-entropy, batch {task.batch}, "
                  f"fp32, {'hflip' if task.hflip else 'no augmentation'}")
        return {framework: shared for framework in ("cnnspec", "keras", "lightning", "plain")}
    recipe = task.recipe
    precision = autocast_wanted(recipe, task.device)
    smoothing = recipe["loss"]["label_smoothing"]
    lookahead = recipe["lookahead"]
    extras = []
    if lookahead["enabled"]:
        extras.append(f"lookahead every {lookahead['steps']} steps alpha {lookahead['alpha']:g} "
                      f"({lookahead['schedule']})")
    if recipe["ema"]["enabled"]:
        extras.append(f"EMA {recipe['ema']['decay']:g}")
    cnnspec = (f"recipes/{task.recipe_name}.yaml as the resolve stage resolves it: {_optimizer_words(recipe['optimizer'])}, "
               f"{_schedule_words(recipe, False)}, cross-entropy label smoothing {smoothing:g}, "
               f"{_augment_words(recipe, False)}, {', '.join(extras + [''])}batch {recipe['batch_size']}, "
               f"{'bf16 autocast' if precision == 'bf16' else precision if precision != 'off' else 'fp32'}, "
               "channels-last")
    left_out = [name for name, on in (("lookahead", lookahead["enabled"]), ("EMA", recipe["ema"]["enabled"]),
                                      ("channels-last", True)) if on]
    torch_part = (f"torch.optim.{_optimizer_words(recipe['optimizer'])}, {_schedule_words(recipe, True)}, "
                  f"CrossEntropyLoss(label_smoothing={smoothing:g}), {_augment_words(recipe, True, task.input_shape[1])}, "
                  f"batch {recipe['batch_size']}")
    lightning = (f"{torch_part}, Trainer(precision='{lightning_precision(recipe, task.device)}'); "
                 f"left out: {', '.join(left_out)}")
    dtype = plain_autocast(recipe, task.device)
    plain = (f"{torch_part}, {'fp32' if dtype is None else str(dtype).removeprefix('torch.') + ' autocast'}, "
             f"NCHW; left out: {', '.join(left_out)}")
    plateau, early = KERAS_PLATEAU, KERAS_EARLY_STOPPING
    keras = (f"keras.optimizers.Adam() defaults (lr 0.001, eps 1e-7), batch {task.batch}, "
             f"ReduceLROnPlateau(monitor='{plateau['monitor']}', factor={plateau['factor']}, "
             f"patience={plateau['patience']}), EarlyStopping(monitor='{early['monitor']}', "
             f"patience={early['patience']}, restore_best_weights=True), cross-entropy, no augmentation, fp32")
    return {"cnnspec": cnnspec, "keras": keras, "lightning": lightning, "plain": plain}

