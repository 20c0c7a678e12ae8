"""Self-contained model checkpoints: the weights plus everything needed to rebuild
and use the model (spec text, class names, normalization, params).

A checkpoint holds only tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`: a file that tries to run code when unpickled is
refused instead of executed.
"""
from __future__ import annotations

import hashlib
import math
import pickle
import re
import zipfile
from pathlib import Path

import torch

from cnnspec.atomic import save_torch
from cnnspec.errors import CnnspecError, SpecError, TrainingError, control_character, first_line
from cnnspec.paths import MODEL
from cnnspec.regular_files import not_a_regular_file
from cnnspec.spec.plugins import PluginError
from cnnspec.torch_files import (
    ZIP_MAGIC,
    UnsafeTorchFile,
    load_torch_file,
    refusal_words,
    zip_directory_problem,
)
from cnnspec.version import cnnspec_version, shown_version

FORMAT = "cnnspec-checkpoint/1"
# Keys added after format 1 was first written are optional: an older file lacks
# image_size / channels / resize and `image_settings` falls back to input_shape and
# "stretch" (what every dataset of that time did), weights_sha256 (then the weights
# are not verified) and cnnspec_version, so the format number stays 1.
DIGEST_KEY = "weights_sha256"
VERSION_KEY = "cnnspec_version"  # the cnnspec that wrote it, named when another cannot read it; never checked


def weights_digest(state_dict: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in sorted name order: the
    same weights give the same digest on every machine, one flipped bit another."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy())
    return digest.hexdigest()


def _spec_text_and_path(spec) -> tuple[str, str | None]:
    """Accept a parsed Spec (has .text and .file) or the path of a spec file."""
    if hasattr(spec, "text"):
        return spec.text, getattr(spec, "file", None)
    return Path(spec).read_text(encoding="utf-8"), str(spec)


def cpu_state_dict(model) -> dict:
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


def save_checkpoint(path, model, spec, meta: dict, params: dict, epoch: int, best_epoch: int) -> None:
    """Write the checkpoint of docs/architecture.md atomically. `meta` is the prepared
    data's meta.json (classes, mean, std, input_shape, and image_size / channels / resize
    when the dataset reads image files)."""
    spec_text, spec_path = _spec_text_and_path(spec)
    channels, image_size, resize = image_settings(meta)
    state_dict = cpu_state_dict(model)
    checkpoint = {
        "format": FORMAT,
        VERSION_KEY: cnnspec_version(),
        "state_dict": state_dict,
        DIGEST_KEY: weights_digest(state_dict),
        "spec_text": spec_text,
        "spec_path": spec_path,
        "classes": list(meta["classes"]),
        "mean": [float(v) for v in meta["mean"]],
        "std": [float(v) for v in meta["std"]],
        "input_shape": [int(v) for v in meta["input_shape"]],
        "num_classes": len(meta["classes"]),
        "image_size": list(image_size),  # (H, W) every image is resized to before the model
        "channels": channels,
        "resize": resize,  # images.read_image's policy: stretch | center_crop
        "params": params,
        "epoch": int(epoch),
        "best_epoch": int(best_epoch),
    }
    save_torch(path, checkpoint)


RETRAIN_HINT = "train it again (dvc repro -f train, or python stages/train.py)"
MAX_IMAGE_SIZE = 8192  # params' data.image_size bound: a height or width above it is no model of ours


def non_finite_tensor(state_dict: dict) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity, or None:
    weights that produce NaN probabilities (training stops before it saves such)."""
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


def image_settings(meta_or_checkpoint: dict) -> tuple[int, tuple[int, int], str]:
    """(channels, (height, width), resize policy) an image is read with for this model:
    the dataset's own when meta.json / the checkpoint has them, else input_shape's and
    "stretch"."""
    channels, height, width = (int(v) for v in meta_or_checkpoint["input_shape"])
    size = meta_or_checkpoint.get("image_size") or (height, width)
    return (int(meta_or_checkpoint.get("channels") or channels),
            (int(size[0]), int(size[1])), str(meta_or_checkpoint.get("resize") or "stretch"))


def other_format(head: bytes) -> str:
    """What a file that is not a zip archive seems to be, from its first bytes."""
    if head.startswith(b"\x08"):  # an ONNX ModelProto starts with its ir_version field
        return "perhaps an ONNX model: cnnspec predict runs one named .onnx"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM")):
        return "an image"
    return "another kind of file"


def is_torchscript(path: Path) -> bool:
    """Whether the zip archive at `path` is what torch.jit.save writes (its code/ and
    constants.pkl), which torch.load(weights_only=True) refuses with a puzzling message."""
    if zip_directory_problem(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except Exception:  # noqa: BLE001 - a damaged archive: torch.load's message says so
        return False


def read_checkpoint(path) -> dict:
    """torch.load with weights_only=True; anything that is not a cnnspec checkpoint
    (a missing, empty or truncated file, another format, a pickle that wants to run
    code, weights that no longer match their digest) is a one-line TrainingError naming
    the file and what to do."""
    path = Path(path)
    kind = not_a_regular_file(path)
    if kind == "a folder":
        raise TrainingError(f"{path}: a folder, not a checkpoint file")
    if kind == "missing":
        raise TrainingError(f"{path}: no such checkpoint file")
    if kind:
        raise TrainingError(f"{path}: cannot read the checkpoint: it is {kind}, not a regular file")
    with open(path, "rb") as file:
        head = file.read(len(ZIP_MAGIC))
    if not head:
        raise TrainingError(f"{path}: the checkpoint is an empty file (damaged: a write that did "
                            f"not finish?); {RETRAIN_HINT}")
    if not ZIP_MAGIC.startswith(head[:len(ZIP_MAGIC)]) or len(head) < len(ZIP_MAGIC):
        raise TrainingError(f"{path}: not a loadable cnnspec checkpoint (torch.save writes a zip "
                            f"archive; this is {other_format(head)})")
    if is_torchscript(path):
        raise TrainingError(f"{path}: a TorchScript export (cnnspec export --format torchscript), not a "
                            f"checkpoint: give the .pt checkpoint it came from, or load it with torch.jit.load")
    try:
        checkpoint = load_torch_file(path)
    except UnsafeTorchFile as problem:
        raise TrainingError(f"{path}: not a loadable cnnspec checkpoint ({problem})") from None
    except Exception as error:  # noqa: BLE001 - hostile bytes fail inside torch in many ways
        said = refusal_words(error)
        refused = isinstance(error, pickle.UnpicklingError) and len(head) == len(ZIP_MAGIC)
        if ZIP_MAGIC.startswith(head) and not refused:  # began as torch.save's zip: damaged
            raise TrainingError(f"{path}: the checkpoint is damaged or truncated ({said[:120]}); "
                                f"{RETRAIN_HINT}") from None
        raise TrainingError(f"{path}: not a loadable cnnspec checkpoint "
                            f"(refused by torch.load(weights_only=True): {said[:160]})") from None
    found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if isinstance(found, str) and found.startswith("cnnspec-checkpoint/") and found != FORMAT:
        raise TrainingError(f"{path}: a cnnspec checkpoint of format {found[:40]!r}{written_by(checkpoint)}, "
                            f"which this version of cnnspec ({cnnspec_version()}) cannot read (it reads "
                            f"{FORMAT!r}){upgrade_hint(found)}")
    if isinstance(found, str) and found.startswith("cnnspec-resume/"):
        raise TrainingError(f"{path}: a training resume state, not a model checkpoint "
                            f"(use {MODEL})")
    if not (isinstance(found, str) and found == FORMAT):  # a tensor compares element-wise
        raise TrainingError(f"{path}: not a cnnspec checkpoint (expected format {FORMAT!r})")
    problem = malformed(checkpoint)
    if problem:
        raise TrainingError(f"{path}: a damaged cnnspec checkpoint: {problem}; {RETRAIN_HINT}")
    stored = checkpoint.get(DIGEST_KEY)
    if stored is not None and stored != weights_digest(checkpoint["state_dict"]):
        raise TrainingError(f"{path}: the checkpoint is damaged: its weights no longer match the "
                            f"sha256 digest stored with them (changed on disk or in transfer); "
                            f"copy it again or {RETRAIN_HINT}")
    broken = non_finite_tensor(checkpoint["state_dict"])
    if broken:
        raise TrainingError(f"{path}: the weights hold NaN or infinity ({broken[:80]}), so the model would "
                            f"output NaN; the weights are broken, {RETRAIN_HINT}")
    return checkpoint


def recorded_version(checkpoint: dict) -> str | None:
    """The cnnspec version a checkpoint names, when it is a plausible one (older files name none)."""
    return shown_version(checkpoint.get(VERSION_KEY))


def written_by(checkpoint: dict) -> str:
    found = recorded_version(checkpoint)
    return f" written by cnnspec {found}" if found else ""


def upgrade_hint(found_format: str) -> str:
    """What to do about a checkpoint format this cnnspec cannot read: a higher number
    comes from a newer cnnspec."""
    number = found_format.removeprefix("cnnspec-checkpoint/")
    if re.fullmatch(r"[0-9]{1,9}", number) and int(number) > int(FORMAT.rsplit("/", 1)[1]):
        return "; it comes from a newer cnnspec: upgrade cnnspec (pip install -U cnnspec) to load it"
    return ""


def malformed(checkpoint: dict) -> str | None:
    """What is wrong with the fields a checkpoint must have, or None. The weights' digest
    does not cover these fields, so each is bounded and checked against the others."""
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict) or not all(
            isinstance(name, str) and isinstance(tensor, torch.Tensor) for name, tensor in state_dict.items()):
        return "state_dict is not a mapping of names to tensors"
    if not isinstance(checkpoint.get("spec_text"), str):
        return "spec_text is not text"
    classes = checkpoint.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "classes is not a list of class names"
    unprintable = next((name for name in classes if control_character(name)), None)
    if unprintable is not None:  # they are printed in predict's table and CSV
        return f"class name {unprintable[:60]!r} holds a control character or line break"
    count = checkpoint.get("num_classes")
    if not isinstance(count, int) or isinstance(count, bool) or count != len(classes):
        return f"num_classes is not the number of classes ({len(classes)})"
    shape = checkpoint.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(is_whole(v) for v in shape)):
        return "input_shape is not three sizes (channels, height, width)"
    if shape[0] not in (1, 3) or not all(1 <= v <= MAX_IMAGE_SIZE for v in shape[1:]):
        return (f"input_shape {shape[:3]} is not 1 or 3 channels of a height and width from 1 to "
                f"{MAX_IMAGE_SIZE}")
    for key in ("mean", "std"):
        values = checkpoint.get(key)
        if not isinstance(values, list) or len(values) != shape[0] or not all(is_finite_number(v) for v in values):
            return f"{key} is not one finite number per channel"
    if any(v == 0 for v in checkpoint["std"]):
        return "std holds a zero"
    for key in ("spec_path", DIGEST_KEY):
        if checkpoint.get(key) is not None and not isinstance(checkpoint[key], str):
            return f"{key} is not text"
    if checkpoint.get("params") is not None and not isinstance(checkpoint["params"], dict):
        return "params is not a mapping"
    return image_settings_problem(checkpoint, shape)


# cnnspec.data.images.RESIZE_POLICIES, the ways an image file becomes the model's input:
# models sits below data, so the checkpoint names them again (a test keeps the two equal).
RESIZE_POLICIES = ("stretch", "center_crop")


def image_settings_problem(checkpoint: dict, shape: list) -> str | None:
    """What is wrong with the optional image_size, channels and resize, or None: each
    must agree with input_shape, the size the network was built for."""
    size, channels, resize = (checkpoint.get(key) for key in ("image_size", "channels", "resize"))
    if not (size is None or (isinstance(size, list) and len(size) == 2 and all(is_whole(v) for v in size))):
        return "image_size is not [height, width]"
    if size is not None and size != shape[1:]:
        return f"image_size {size} is not the height and width of input_shape {shape}"
    if not (channels is None or (isinstance(channels, int) and channels in (1, 3))):
        return "channels is not 1 or 3"
    if channels is not None and channels != shape[0]:
        return f"channels {channels} is not the channels of input_shape {shape}"
    if not (resize is None or (isinstance(resize, str) and resize in RESIZE_POLICIES)):
        return f"resize is not one of {', '.join(RESIZE_POLICIES)}"
    return None


def is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_network(path, device="cpu"):
    """Rebuild the network (the SpecModel) a checkpoint describes, load its weights, put it in eval mode
    on `device`. Returns (model, checkpoint).

    A checkpoint is data: loading it never imports a module. When its spec uses layer
    types from plugins, load those first (`--plugin MODULE`, `cnnspec.load_plugins`)."""
    from cnnspec.models.compiler import build_model
    from cnnspec.spec.reader import parse_spec

    checkpoint = read_checkpoint(path)
    try:
        spec = parse_spec(checkpoint["spec_text"], checkpoint.get("spec_path") or str(path))
    except SpecError as error:
        missing = unregistered_layer_types(checkpoint["spec_text"])
        if missing and "unknown layer type" in str(error):
            raise PluginError(plugins_needed(path, missing, checkpoint)) from None
        raise TrainingError(f"{path}: the spec stored in the checkpoint is not valid: {error}"
                            f"{newer_cnnspec_hint(checkpoint, str(error))}") from None
    try:
        # the weights are all in the checkpoint: no ImageNet download for a backbone
        model = build_model(spec, tuple(checkpoint["input_shape"]), checkpoint["num_classes"],
                            load_weights=False)
        model.load_state_dict(checkpoint["state_dict"])
    except CnnspecError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        raise TrainingError(f"{path}: the weights do not fit the spec stored with them: "
                            f"{first_line(error, 'mismatch')}") from None
    return model.to(device).eval(), checkpoint


def unregistered_layer_types(spec_text: str) -> list[str]:
    """Names written where a layer type goes (a list item TYPE or {TYPE: ...}) that no
    registered layer type has, in the order they appear."""
    from cnnspec.layers.registry import TYPE_NAME
    from cnnspec.spec.reader import layer_schemas
    from cnnspec.spec.yamlio import load_yaml

    try:
        document = load_yaml(spec_text)
    except SpecError:
        return []
    found, stack = [], [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(reversed(list(value.values())))
        elif isinstance(value, list):
            for item in value:
                name = (item if isinstance(item, str)
                        else next(iter(item)) if isinstance(item, dict) and len(item) == 1 else None)
                if (isinstance(name, str) and TYPE_NAME.match(name) and name not in layer_schemas()
                        and name not in found and not name.startswith("$")):
                    found.append(name)
            stack.extend(reversed(value))
    return found


def plugins_needed(path, missing: list[str], checkpoint: dict) -> str:
    model = (checkpoint.get("params") or {}).get("model")  # params: a dict or None (malformed)
    named = model.get("plugins") if isinstance(model, dict) else None
    named = [str(name) for name in named if isinstance(name, str)] if isinstance(named, list) else []
    trained = (f" (it was trained with the plugin{'s' * (len(named) != 1)} "
               f"{', '.join(named)})") if named else ""
    newer = "" if named else newer_cnnspec_hint(checkpoint, "unknown layer type")
    return (f"{path}: the model uses layer type{'s' * (len(missing) != 1)} {', '.join(missing)} "
            f"that no loaded plugin registers{trained}; a checkpoint never imports code: load the "
            f"plugin yourself with --plugin MODULE (cnnspec.load_plugins in Python), only code you trust"
            f"{newer}")


def newer_cnnspec_hint(checkpoint: dict, problem: str) -> str:
    """Why a stored spec this cnnspec does not know (a layer type, an option, a key) may
    be fine after all: it passed the checks of the cnnspec it was trained with, perhaps a
    newer one that has them."""
    if "unknown" not in problem:
        return ""
    ours, theirs = cnnspec_version(), recorded_version(checkpoint)
    if theirs and theirs != ours:
        return f"; it was written by cnnspec {theirs}, this is cnnspec {ours}: load it with cnnspec {theirs}"
    return f"; if it was trained with a newer cnnspec than this one ({ours}), upgrade cnnspec to load it"
