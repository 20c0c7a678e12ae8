"""Self-contained model checkpoints: the weights plus everything needed to rebuild
and use the model (spec text, class names, normalization, params).

A checkpoint holds only tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`: a file that tries to run code when unpickled is
refused instead of executed.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from cnnspec.atomic import save_torch
from cnnspec.errors import CnnspecError, TrainingError

FORMAT = "cnnspec-checkpoint/1"
# Keys added after format 1 was first written are optional: an older file lacks
# image_size / channels / resize and `image_settings` falls back to input_shape and
# "stretch" (what every dataset of that time did), so the format number stays 1.


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
    checkpoint = {
        "format": FORMAT,
        "state_dict": cpu_state_dict(model),
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
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def image_settings(meta_or_checkpoint: dict) -> tuple[int, tuple[int, int], str]:
    """(channels, (height, width), resize policy) an image is read with for this model:
    the dataset's own when meta.json / the checkpoint has them, else input_shape's and
    "stretch"."""
    channels, height, width = (int(v) for v in meta_or_checkpoint["input_shape"])
    size = meta_or_checkpoint.get("image_size") or (height, width)
    return (int(meta_or_checkpoint.get("channels") or channels),
            (int(size[0]), int(size[1])), str(meta_or_checkpoint.get("resize") or "stretch"))


def read_checkpoint(path) -> dict:
    """torch.load with weights_only=True; anything that is not a cnnspec checkpoint
    (a missing, empty or truncated file, another format, a pickle that wants to run
    code) is a one-line TrainingError naming the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no such checkpoint file")
    with open(path, "rb") as file:
        head = file.read(len(ZIP_MAGIC))
    if not head:
        raise TrainingError(f"{path}: the checkpoint is an empty file (damaged: a write that did "
                            f"not finish?); {RETRAIN_HINT}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        first_line = (str(error).strip().splitlines() or ["unreadable"])[0].split(". ")[0]
        refused = isinstance(error, pickle.UnpicklingError) and len(head) == len(ZIP_MAGIC)
        if ZIP_MAGIC.startswith(head) and not refused:  # began as torch.save's zip: damaged
            cause = first_line.split(". ")[0][:120]
            raise TrainingError(f"{path}: the checkpoint is damaged or truncated ({cause}); "
                                f"{RETRAIN_HINT}") from None
        raise TrainingError(f"{path}: not a loadable cnnspec checkpoint "
                            f"(refused by torch.load(weights_only=True): {first_line})") from None
    found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if isinstance(found, str) and found.startswith("cnnspec-checkpoint/") and found != FORMAT:
        raise TrainingError(f"{path}: a cnnspec checkpoint of format {found!r}, which this version "
                            f"of cnnspec cannot read (it reads {FORMAT!r})")
    if isinstance(found, str) and found.startswith("cnnspec-resume/"):
        raise TrainingError(f"{path}: a training resume state, not a model checkpoint "
                            "(use models/model.pt)")
    if found != FORMAT:
        raise TrainingError(f"{path}: not a cnnspec checkpoint (expected format {FORMAT!r})")
    return checkpoint


def load_model(path, device="cpu"):
    """Rebuild the model a checkpoint describes, load its weights, put it in eval mode
    on `device`. Returns (model, checkpoint)."""
    from cnnspec.models.compiler import build_model
    from cnnspec.spec.reader import parse_spec
    from cnnspec.spec.plugins import load_plugins

    checkpoint = read_checkpoint(path)
    try:
        load_plugins(((checkpoint.get("params") or {}).get("model") or {}).get("plugins"))
        spec = parse_spec(checkpoint["spec_text"], checkpoint.get("spec_path") or str(path))
        # the weights are all in the checkpoint: no ImageNet download for a backbone
        model = build_model(spec, tuple(checkpoint["input_shape"]), checkpoint["num_classes"],
                            load_weights=False)
        model.load_state_dict(checkpoint["state_dict"])
    except CnnspecError:
        raise
    except (RuntimeError, KeyError) as error:
        first_line = (str(error).strip().splitlines() or ["mismatch"])[0]
        raise TrainingError(f"{path}: the weights do not fit the spec stored with them: "
                            f"{first_line}") from None
    return model.to(device).eval(), checkpoint
