"""What an exported model carries besides its graph, and reading it back: the class names,
the input's image size, channels and resize policy, and the normalization inside the graph,
in an ONNX file's metadata_props and a TorchScript file's extra file. Export writes it;
`cnnspec predict model.onnx` reads it, so a deployer needs only the one file."""
from __future__ import annotations

from pathlib import Path

import torch

from cnnspec.errors import CnnspecError, first_line


class ExportError(CnnspecError):
    """The export failed, does not match PyTorch, or an exported file cannot be read."""


METADATA_PREFIX = "cnnspec."        # ONNX metadata_props keys: cnnspec.classes, ...
TORCHSCRIPT_METADATA = "cnnspec.json"  # the TorchScript file's extra file


def metadata(model) -> dict[str, str]:
    """What a deployer needs besides the graph, as strings (JSON for lists): the class
    names in output order, the input's image size, channels and resize policy, and the
    normalization the graph already applies (pixels / 255, then (x - mean) / std)."""
    import json

    checkpoint = model.checkpoint
    return {
        "classes": json.dumps(list(model.classes)),
        "image_size": json.dumps(list(model.image_size)),
        "channels": str(model.channels),
        "resize": model.resize,
        "mean": json.dumps(list(checkpoint.get("mean", []))),
        "std": json.dumps(list(checkpoint.get("std", []))),
        "input": "images: float32 (N, C, H, W), pixels / 255 (normalization is inside the graph)",
        "output": "probabilities: float32 (N, classes), in the order of classes",
    }


def read_metadata(path) -> dict:
    """The metadata `export` wrote into an ONNX or TorchScript file, parsed:
    {"classes": [...], "image_size": [h, w], "channels": c, "resize": ..., "mean", "std"}.
    Raises ExportError naming the file when it has none."""
    import json

    path = Path(path)
    try:
        if path.suffix.lower() == ".onnx":
            import onnx

            props = {entry.key.removeprefix(METADATA_PREFIX): entry.value
                     for entry in onnx.load(str(path), load_external_data=False).metadata_props
                     if entry.key.startswith(METADATA_PREFIX)}
        else:
            files = {TORCHSCRIPT_METADATA: ""}
            torch.jit.load(str(path), map_location="cpu", _extra_files=files)
            props = json.loads(files[TORCHSCRIPT_METADATA] or "{}")
    except ExportError:
        raise
    except Exception as error:  # protobuf / zip errors: the file is not what it says
        first = first_line(error, "unreadable")
        raise ExportError(f"{path}: not a readable exported model ({first})") from None
    if "classes" not in props:
        raise ExportError(f"{path}: no cnnspec metadata (class names, image size); "
                          "export it again with cnnspec export")
    try:
        settings = {"classes": json.loads(props["classes"]), "image_size": json.loads(props["image_size"]),
                    "channels": int(props["channels"]), "resize": props["resize"],
                    "mean": json.loads(props.get("mean", "[]")), "std": json.loads(props.get("std", "[]"))}
    except (KeyError, ValueError) as error:
        raise ExportError(f"{path}: damaged cnnspec metadata ({error})") from None
    problem = _malformed(settings)
    if problem:
        raise ExportError(f"{path}: damaged cnnspec metadata ({problem})")
    return settings


def _malformed(settings: dict) -> str | None:
    """What is wrong with parsed metadata, or None."""
    from cnnspec.data.images import RESIZE_POLICIES

    classes, size = settings["classes"], settings["image_size"]
    if not (isinstance(classes, list) and classes and all(isinstance(name, str) for name in classes)):
        return "classes: expected a list of class names"
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
        return f"image_size: expected [height, width], not {json_text(size)}"
    if settings["channels"] < 1:
        return f"channels: expected a number >= 1, not {settings['channels']}"
    if settings["resize"] not in RESIZE_POLICIES:
        return f"resize: expected one of {', '.join(RESIZE_POLICIES)}, not {settings['resize']!r}"
    return None


def json_text(value) -> str:
    import json

    return json.dumps(value)[:60]
