"""Export a checkpoint's inference graph to ONNX or TorchScript, and prove it matches.

    cnnspec export models/model.pt --format onnx          # -> models/model.onnx
    cnnspec export models/model.pt --format torchscript   # -> models/model.torchscript.pt

The exported graph is inference.InferenceModel in eval mode: normalization, the network,
softmax. Input `images`: float32 (N, C, H, W), pixels in 0..1 (uint8 / 255, what
torchvision's ToTensor gives), N dynamic; output `probabilities`: float32 (N, classes).
In eval mode the in-model augmentation layers return their input and dropout is the
identity, so neither leaves a trace in the graph.

Before the file is put in place, its outputs are compared with PyTorch's on real test
images (the prepared test split when it fits the model, else seeded random images, and
the message says which), at two batch sizes, saying how far it is on stderr; a difference above TOLERANCE is an error
and nothing is written.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from cnnspec.atomic import atomic_path, check_destination
from cnnspec.errors import first_line
from cnnspec.inference.metadata import TORCHSCRIPT_METADATA, ExportError, metadata
from cnnspec.inference.onnx_graph import TOLERANCE, onnx_bytes
from cnnspec.paths import PREPARED
from cnnspec.progress import Progress

CHECK_IMAGES = 64
CHECK_BATCH = 16  # neither 1 nor the traced batch of 2, and a progress line every quarter
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
# Opsets written: from 13 (softmax over one axis, what every graph here ends with) to the
# TorchScript-based exporter's newest; params.yaml's export.opset has the same bounds.
OPSETS = (13, 20)


def default_output(checkpoint, fmt: str) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(".pt") + SUFFIXES[fmt])


def check_images(model, prepared=PREPARED, count: int = CHECK_IMAGES,
                 required: bool = False) -> tuple[torch.Tensor, str]:
    """float32 (N, C, H, W) in 0..1 to check an export on, and where they came from: the
    first `count` test images of `prepared` when their shape is the model's, else
    seeded uniform noise (said so), or, when the images were `required` (a folder named on
    the command line), a UsageError."""
    from cnnspec.data.integrity import load_npy
    from cnnspec.regular_files import read_json

    shape = tuple(model.checkpoint["input_shape"])
    folder = Path(prepared)
    try:
        meta = read_json(folder / "meta.json")
        if tuple(meta["input_shape"]) == shape:
            images = load_npy(folder / "test_images.npy")[:count]
            if len(images):
                return torch.from_numpy(np.array(images)).float() / 255, \
                    f"{len(images)} test images of {folder}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if required:
        from cnnspec.errors import UsageError

        raise UsageError(f"--check-images {folder}: no prepared test images of shape {list(shape)} there "
                         f"(meta.json and test_images.npy, as preprocess writes them in {PREPARED})")
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (count, *shape), generator=generator, dtype=torch.uint8)
    return noise.float() / 255, f"{count} random images (no prepared test images of shape {list(shape)} in {folder})"


def _export_onnx(model, example: torch.Tensor, path: Path, opset: int) -> None:
    Path(path).write_bytes(onnx_bytes(model, example, opset))


def _export_torchscript(model, example: torch.Tensor, path: Path) -> None:
    import json

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata(model))})


def exported_runner(path: Path, fmt: str):
    """The exported file, loaded once, as a function from `images` (float32 NCHW in 0..1)
    to its probabilities."""
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise ExportError("checking an ONNX export needs onnxruntime: "
                              "pip install 'cnnspec[export]'") from None
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime's own error types
            raise _cannot_run(error) from None

        def run_onnx(images: torch.Tensor) -> np.ndarray:
            try:
                return session.run(["probabilities"], {"images": images.numpy()})[0]
            except Exception as error:  # noqa: BLE001 - onnxruntime's own error types
                raise _cannot_run(error) from None
        return run_onnx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run_torchscript(images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return loaded(images).numpy()
    return run_torchscript


def _cannot_run(error: Exception) -> ExportError:
    return ExportError(f"onnxruntime cannot run the export ({first_line(error)[:160]}); nothing written")


def run_exported(path: Path, fmt: str, images: torch.Tensor) -> np.ndarray:
    """The exported file's probabilities for `images` (float32 NCHW in 0..1)."""
    return exported_runner(path, fmt)(images)


def largest_difference(path: Path, fmt: str, model, images: torch.Tensor, progress: bool = False) -> float:
    """max |exported - PyTorch| over `images` run CHECK_BATCH at a time and the first few
    one at a time (batch sizes the graph was not traced with: the batch dimension is
    dynamic). `progress`: say how far it is on stderr (cnnspec.progress); a resnet50 at
    224x224 takes most of a minute on a CPU."""
    run = exported_runner(path, fmt)
    differences = []
    with Progress(f"checking the {fmt} export", len(images), unit="images", enabled=progress) as bar:
        for start in range(0, len(images), CHECK_BATCH):
            batch = images[start:start + CHECK_BATCH]
            differences.append(_difference(path, run(batch), model, batch))
            bar.update(len(batch))
    differences += [_difference(path, run(images[i:i + 1]), model, images[i:i + 1])
                    for i in range(min(3, len(images)))]
    return float(np.max(differences))  # NaN stays NaN: a graph that outputs NaN fails the check


def _difference(path: Path, got: np.ndarray, model, images: torch.Tensor) -> float:
    with torch.inference_mode():
        expected = model(images).numpy()
    if got.shape != expected.shape:
        raise ExportError(f"{path}: the export returns shape {got.shape}, PyTorch {expected.shape}")
    return float(np.abs(got - expected).max())


def export(checkpoint, fmt: str, output=None, prepared=None, opset: int = 17,
           prepared_required: bool = False, progress: bool = False) -> dict:
    """Export `checkpoint` to `output` (default: beside it) and check it on the test
    images of `prepared` (default data/prepared, or generated ones when it has none,
    unless `prepared_required`; `progress`: as largest_difference). Returns {"output",
    "difference", "checked_on"}; raises ExportError when it does not match, or a
    UsageError before any work when an argument is wrong."""
    from cnnspec.errors import UsageError
    from cnnspec.inference.predict import load_model

    if fmt not in SUFFIXES:
        raise UsageError(f"--format: expected onnx or torchscript, not {fmt!r}")
    if fmt == "onnx" and not OPSETS[0] <= opset <= OPSETS[1]:
        raise UsageError(f"--opset: expected {OPSETS[0]} to {OPSETS[1]}, not {opset}")
    output = check_destination(output if output else default_output(checkpoint, fmt))
    if output.exists() and Path(checkpoint).exists() and output.samefile(checkpoint):
        raise ExportError(f"{output}: is the checkpoint being exported; give another --output")
    if fmt == "torchscript" and output.suffix.lower() == ".onnx":
        raise ExportError(f"{output}: a .onnx name would be read as ONNX; name a TorchScript export "
                          f"{SUFFIXES['torchscript']} (the default) or .pt")
    model = load_model(checkpoint, "cpu")
    images, checked_on = check_images(model, PREPARED if prepared is None else prepared,
                                      required=prepared_required)
    example = images[:2]
    with atomic_path(output) as temporary:
        try:
            if fmt == "onnx":
                _export_onnx(model, example, temporary, opset)
            else:
                _export_torchscript(model, example, temporary)
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as error:
            first = first_line(error, "failed")
            raise ExportError(f"{checkpoint}: {fmt} export failed: {first}") from None
        difference = largest_difference(temporary, fmt, model, images, progress)
        if not difference <= TOLERANCE:
            raise ExportError(f"{checkpoint}: the {fmt} export differs from PyTorch by {difference:.2e} "
                              f"(> {TOLERANCE:g}) on {checked_on}; nothing written")
    return {"output": str(output), "difference": difference, "checked_on": checked_on}


def run_command(args) -> int:
    if args.check_images is not None and not Path(args.check_images).is_dir():
        from cnnspec.errors import UsageError

        raise UsageError(f"--check-images {args.check_images}: no such folder (prepared data, like {PREPARED})")
    result = export(args.checkpoint, args.format, args.output, args.check_images, args.opset,
                    prepared_required=args.check_images is not None, progress=True)
    print(f"wrote {result['output']}: input images float32 (N, C, H, W) in 0..1, output "
          f"probabilities; matches PyTorch within {TOLERANCE:g} (largest difference "
          f"{result['difference']:.1e}) on {result['checked_on']}")
    return 0
