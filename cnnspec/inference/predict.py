"""Use a trained model: classify images from files, PIL images, arrays or tensors
(`cnnspec predict`, `cnnspec.load_model`, `cnnspec.predict`).

    model = cnnspec.load_model("models/model.pt")           # eval mode, normalization inside
    probabilities = model(pixels)                            # uint8 0..255 or float 0..1, (N, C, H, W)
    for row in cnnspec.predict(model, ["cat.jpg", "dog.png"], top_k=3):
        print(row.source, row.classes[0], row.probabilities[0])

Everything comes from the checkpoint (spec text, class names, mean/std, input shape,
image size, channels and resize policy), so a fresh clone with only the .pt file can
predict. Images are decoded by `images.read_image`, the same code the preprocess stage
uses, and normalized with the same float32 arithmetic as the evaluate stage, so a
prediction equals evaluate's probability for the same image.
"""
from __future__ import annotations

import os
import sys
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnspec.data.images import ImageReadError, read_image
from cnnspec.errors import DataError, TrainingError
from cnnspec.inference.image_paths import find_images
from cnnspec.inference.metadata import ExportError
from cnnspec.inference.onnx_model import OnnxModel, OnnxUnavailable
from cnnspec.progress import Progress

DECODE_THREADS = 4  # Pillow releases the GIL while decoding


class InferenceModel(nn.Module):
    """A trained SpecModel with its normalization in front and softmax behind.

    `forward(x)`: `x` is (N, C, H, W) pixels, uint8 in 0..255 or float in 0..1 (what
    torchvision's ToTensor gives); returns class probabilities (N, num_classes), float32.
    `logits(x)` returns the scores before softmax. Attributes: `classes`, `channels`,
    `image_size` (H, W), `resize` (the policy images are resized with), `checkpoint`
    (the checkpoint's plain values, without the weights).
    """

    def __init__(self, network: nn.Module, mean, std, classes, channels: int,
                 image_size: tuple[int, int], resize: str, checkpoint: dict | None = None):
        super().__init__()
        self.network = network
        from cnnspec.data.datasets import Normalize

        normalize = Normalize(mean, std, "cpu")  # training's and evaluation's formula, as buffers
        self.register_buffer("scale", normalize.scale)
        self.register_buffer("shift", normalize.shift)
        self.classes = list(classes)
        self.channels, self.image_size, self.resize = int(channels), tuple(image_size), resize
        self.checkpoint = checkpoint or {}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(pixels / 255 - mean) / std as datasets.Normalize computes it (one multiply-add),
        so a uint8 image gets bit for bit the input evaluate gives the network."""
        if x.dtype == torch.uint8:
            return self.shift.addcmul(x.float(), self.scale)
        return self.shift.addcmul(x, self.scale * 255)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalize(x)).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).softmax(dim=1)


def load_model(path, device="cpu") -> InferenceModel:
    """The checkpoint at `path` as an InferenceModel in eval mode on `device`. A file that
    is not a cnnspec checkpoint, or of a format this version cannot read, raises a
    one-line TrainingError."""
    from cnnspec.models.checkpoint import image_settings, load_network

    network, checkpoint = load_network(path, "cpu")
    channels, size, resize = image_settings(checkpoint)
    plain = {key: value for key, value in checkpoint.items() if key != "state_dict"}
    model = InferenceModel(network, checkpoint["mean"], checkpoint["std"], checkpoint["classes"],
                           channels, size, resize, plain)
    model.requires_grad_(False)  # model(x) gives probabilities to use, not a graph to train
    return model.to(device).eval()


# ---------------------------------------------------------------- engines

ENGINES = ("auto", "torch", "onnxruntime")
# `auto` runs onnxruntime from this many images on. Exporting costs 0.1-0.2 s in a fresh
# process for a small network (importing onnx, which torch's exporter needs, and the
# session) and 0.4 s for resnet18_cifar; onnxruntime then saves 10-100 us an image on
# the small networks and 1 ms on resnet18_cifar: it pays from 1,200-18,000 images on the
# small ones (by network and thread count) and a few hundred on resnet18_cifar, so from
# here on it wins on each (docs/benchmarks.md, section 7).
ONNXRUNTIME_MIN_IMAGES = 20_000


def choose_engine(model: InferenceModel, images: int, engine: str = "auto", tta: str = "none") -> str:
    """"torch" or "onnxruntime": `engine` itself unless it is auto, which picks
    onnxruntime for at least ONNXRUNTIME_MIN_IMAGES images on a model in eval mode on
    the CPU with no test-time augmentation (whether onnxruntime is installed is the
    caller's question: see with_engine)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine != "auto":
        return engine
    on_cpu = model.shift.device.type == "cpu"
    return "onnxruntime" if (on_cpu and not model.training and tta == "none"
                             and images >= ONNXRUNTIME_MIN_IMAGES) else "torch"


def with_engine(model: InferenceModel, images: int, engine: str = "auto", tta: str = "none"):
    """What runs the network for `images` images: `model` itself, or an OnnxModel
    running its in-memory ONNX export (choose_engine says which). With engine auto, a
    missing onnxruntime or a failed export keeps torch silently, and an onnxruntime that
    is installed but does not load keeps torch with one note on stderr; with engine
    onnxruntime, each is a one-line ExportError."""
    chosen = choose_engine(model, images, engine, tta)
    if chosen == "torch":
        return model
    if engine == "onnxruntime":
        if model.training:  # the export is of eval mode; its check would also move batch norm's statistics
            raise ExportError("--engine onnxruntime runs the model in eval mode; call model.eval() first")
        if tta != "none":
            raise ExportError("--engine onnxruntime runs the model as exported; test-time augmentation "
                              "needs --engine torch or auto")
        if model.shift.device.type != "cpu":
            raise ExportError(f"--engine onnxruntime runs on the CPU, not {model.shift.device}; "
                              "use --device cpu")
        try:
            return OnnxModel.from_model(model)
        except OnnxUnavailable as error:
            raise OnnxUnavailable(f"--engine onnxruntime: {error}", error.installed) from None
    try:
        return OnnxModel.from_model(model)
    except OnnxUnavailable as error:
        if error.installed:
            print(f"note: {error}; predicting with torch", file=sys.stderr)
        return model
    except ExportError:
        return model


# ---------------------------------------------------------------- inputs

def _from_array(array: np.ndarray, model: InferenceModel, name: str) -> torch.Tensor:
    """One image array: uint8 (H, W), (H, W, C) or (C, H, W), or float in 0..1 (C, H, W)."""
    channels, (height, width) = model.channels, model.image_size
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise DataError(f"{name}: expected an image of 2 or 3 dimensions, got shape {array.shape}")
    if array.shape[0] != channels and array.shape[-1] in (1, 3, 4):
        array = array.transpose(2, 0, 1)  # HWC -> CHW
    if array.shape[0] not in (1, 3, 4):
        raise DataError(f"{name}: expected an image (H, W), (H, W, C) or (C, H, W) with 1, 3 or 4 channels, got "
                        f"shape {tuple(array.shape)}; a batch is (N, C, H, W), or (N, H, W) for a 1-channel model")
    if array.dtype.kind in "iu" and array.dtype != np.uint8:  # int pixels: uint8 when they fit
        if array.size and (array.min() < 0 or array.max() > 255):
            raise DataError(f"{name}: integer pixels must be in 0..255, found {array.min()}..{array.max()}")
        array = array.astype(np.uint8)
    if array.dtype.kind != "f" and array.dtype != np.uint8:
        raise DataError(f"{name}: expected uint8 pixels or floats in 0..1, not {array.dtype} values")
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and array.min(initial=0) >= 0
                                        and array.max(initial=0) <= 1):
        raise DataError(f"{name}: a float image must hold pixels / 255, in 0..1, found "
                        f"{array.min()}..{array.max()}; divide by 255 or pass uint8 pixels")
    if array.dtype == np.uint8:
        if array.shape != (channels, height, width):
            from PIL import Image  # another size or colour layout: the checkpoint's resize policy

            hwc = array.transpose(1, 2, 0)
            image = Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc)
            array = read_image(image, channels, (height, width), model.resize)
        return torch.from_numpy(np.array(array))  # a copy: the caller keeps its array
    if array.shape != (channels, height, width):
        raise DataError(f"{name}: a float image must already be {channels}x{height}x{width} "
                        f"(C, H, W) in 0..1, got shape {array.shape}; pass uint8 pixels to resize it")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def to_pixels(item, model: InferenceModel, name: str = "input") -> torch.Tensor:
    """One input (a path, bytes, a PIL image, a numpy array or a tensor) as a (C, H, W)
    tensor the model takes: uint8 pixels, or float in 0..1 for float inputs."""
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        item = (item.float() if item.is_floating_point() else item).numpy()  # bf16 has no numpy type
    if isinstance(item, np.ndarray):
        return _from_array(item, model, name)
    if not isinstance(item, (str, Path, bytes, bytearray)) and not hasattr(item, "getpixel"):
        # an int would be opened as a file descriptor (0: stdin), and closed
        raise DataError(f"{name}: expected a path, the bytes of an image file, a PIL image, an array or a "
                        f"tensor, not {type(item).__name__}")
    return torch.tensor(read_image(item, model.channels, model.image_size, model.resize))


def _expand(inputs, channels: int) -> list:
    """A single input or a sequence of them. A 4-D array or tensor is a batch of images;
    so is a 3-D one (N, H, W) for a model of `channels` 1, unless its last axis holds
    1, 3 or 4 channels (one (H, W, C) image). (3, H, W) and (4, H, W) could be either a
    colour image or 3 or 4 gray ones: a DataError asks which."""
    if isinstance(inputs, (str, Path, bytes, bytearray)) or hasattr(inputs, "getpixel"):
        return [inputs]
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        shape = tuple(inputs.shape)
        gray_batch = len(shape) == 3 and channels == 1 and shape[0] != 1 and shape[-1] not in (1, 3, 4)
        if gray_batch and shape[0] in (3, 4):
            raise DataError(f"input: a {shape} array for a 1-channel model is {shape[0]} gray images or one "
                            f"colour image: pass ({shape[0]}, 1, {shape[1]}, {shape[2]}) for images, or "
                            f"({shape[1]}, {shape[2]}, {shape[0]}) for one image")
        return list(inputs) if len(shape) == 4 or gray_batch else [inputs]
    return list(inputs)


# ---------------------------------------------------------------- prediction

@dataclass
class Prediction:
    """The top-k classes of one input, most probable first; `error` instead when the
    input could not be read (then classes and probabilities are empty)."""

    source: str
    classes: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None


@torch.inference_mode()
def probabilities_of(model: InferenceModel, pixels: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Class probabilities of a (N, C, H, W) batch, with evaluate's test-time augmentation."""
    from cnnspec.inference.evaluation import TTA

    device = model.shift.device
    pixels = pixels.to(device)
    return TTA[tta](model.network, model.normalize(pixels)).float()


def _top_k(probabilities: torch.Tensor, classes: list[str], k: int):
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [([classes[i] for i in row_indices], [float(v) for v in row_values])
            for row_indices, row_values in zip(indices.tolist(), values.tolist())]


def predict(model_or_path, inputs, top_k: int = 1, batch_size: int = 64, device=None,
            tta: str = "none", engine: str = "auto") -> list[Prediction]:
    """Classify `inputs`: a path, bytes, PIL image, numpy array (uint8 HWC / CHW, or a
    float CHW in 0..1), tensor, or a list of them (a 4-D array is a batch, and so is (N, H, W)
    for a 1-channel model). Returns one
    Prediction per image, in order. An unreadable image raises ImageReadError. `engine`:
    auto (onnxruntime for many images on the CPU when it is installed, see
    choose_engine), torch or onnxruntime."""
    from cnnspec.inference.evaluation import TTA

    if tta not in TTA:
        raise ValueError(f"tta must be one of {', '.join(TTA)}, not {tta!r}")
    for name, value in (("top_k", top_k), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, not {value!r}")
    loaded = isinstance(model_or_path, (InferenceModel, OnnxModel))
    if loaded and device is not None:
        raise ValueError("device applies when predict loads the checkpoint; move a loaded model with "
                         "model.to(device)")
    model = model_or_path if loaded else load_model(model_or_path, device or "cpu")
    items = _expand(inputs, model.channels)
    if isinstance(model, InferenceModel):
        model = with_engine(model, len(items), engine, tta)
    names = [str(item) if isinstance(item, (str, Path)) else f"input {index}"
             for index, item in enumerate(items)]
    results = []
    for start in range(0, len(items), batch_size):
        chunk = [to_pixels(item, model, name) for item, name in
                 zip(items[start:start + batch_size], names[start:start + batch_size])]
        results += _predict_batch(model, chunk, names[start:start + batch_size], top_k, tta)
    return results


def _predict_batch(model, pixels: list[torch.Tensor], names: list[str], top_k: int, tta: str):
    # Mixed uint8 and float inputs share one float batch: uint8 / 255 is normalize's own step.
    if all(p.dtype == torch.uint8 for p in pixels):
        batch = torch.stack(pixels)
    else:
        batch = torch.stack([p.float() / 255 if p.dtype == torch.uint8 else p for p in pixels])
    if isinstance(model, OnnxModel):
        probabilities = model.probabilities(batch)
    else:
        probabilities = probabilities_of(model, batch, tta).cpu()
    broken = [name for name, row in zip(names, torch.isfinite(probabilities).all(dim=1).tolist()) if not row]
    if broken:  # weights that overflow: never print a NaN probability (nor invalid JSON)
        raise TrainingError(f"the model outputs NaN or infinity for {len(broken)} images (the first: "
                            f"{broken[0]}); its weights are broken, train it again")
    return [Prediction(name, classes, values) for name, (classes, values)
            in zip(names, _top_k(probabilities, model.classes, top_k))]


def predict_files(model: InferenceModel, paths: list[str], top_k: int = 1, batch_size: int = 64,
                  tta: str = "none", progress: bool = False) -> list[Prediction]:
    """Classify image files; an unreadable one gets a Prediction with its `error` and
    the others go on. Files are decoded in a few threads while the model runs."""
    results: list[Prediction] = []

    def decode(path):
        try:
            return read_image(path, model.channels, model.image_size, model.resize)
        except ImageReadError as error:
            return error

    with ThreadPoolExecutor(DECODE_THREADS) as pool, \
            Progress("predicting", len(paths), unit="images", enabled=progress) as bar:
        for start in range(0, len(paths), batch_size):
            names = paths[start:start + batch_size]
            decoded = list(pool.map(decode, names))
            good = [(name, torch.tensor(array)) for name, array in zip(names, decoded)
                    if not isinstance(array, Exception)]
            predicted = iter(_predict_batch(model, [p for _, p in good], [n for n, _ in good], top_k, tta)
                             if good else [])
            for name, array in zip(names, decoded):
                results.append(Prediction(name, error=str(array)) if isinstance(array, Exception)
                               else next(predicted))
            bar.update(len(names))
    return results


def prediction_columns(top_k: int) -> list[str]:
    """path, class, probability, class_2, probability_2, ... up to `top_k`."""
    columns = ["path", "class", "probability"]
    for rank in range(2, top_k + 1):
        columns += [f"class_{rank}", f"probability_{rank}"]
    return columns


def as_csv(predictions: list[Prediction], top_k: int) -> str:
    """`path,class,probability[,class_2,probability_2,...],error`."""
    import csv
    import io

    header = prediction_columns(top_k)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header + ["error"])
    for p in predictions:
        cells = []
        for rank in range(top_k):
            cells += ([p.classes[rank], f"{p.probabilities[rank]:.6f}"] if rank < len(p.classes) else ["", ""])
        writer.writerow([p.source] + cells + [p.error or ""])
    return out.getvalue()


def as_json(predictions: list[Prediction]) -> str:
    import json

    rows = [{"path": p.source,
             "class": p.classes[0] if p.classes else None,
             "probability": p.probabilities[0] if p.probabilities else None,
             "top_k": [{"class": c, "probability": v} for c, v in zip(p.classes, p.probabilities)],
             "error": p.error} for p in predictions]
    return json.dumps(rows, indent=2) + "\n"


def _shown(text: str) -> str:
    """`text` on one line: control characters (a line break in a file name) escaped."""
    return "".join(repr(char)[1:-1] if unicodedata.category(char) == "Cc" else char for char in text)


def _width(text: str) -> int:
    """The columns `text` takes in a terminal: two for a wide (CJK) character, none for a
    combining accent."""
    return sum(0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
               for char in text)


def _padded(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def as_table(predictions: list[Prediction]) -> str:
    """Aligned columns for reading, headed like the CSV's: path, class, probability,
    class_2, probability_2, ...; an unreadable image's row holds its error."""
    header = prediction_columns(max((len(p.classes) for p in predictions), default=1) or 1)
    rows = [[_shown(p.source)] + [cell for c, v in zip(p.classes, p.probabilities) for cell in (_shown(c), f"{v:.4f}")]
            for p in predictions if not p.error]
    widths = [max(_width(row[column]) for row in [header, *rows] if column < len(row))
              for column in range(len(header))]
    widths[0] = max([widths[0]] + [_width(_shown(p.source)) for p in predictions])  # an unreadable image's path too
    lines = []
    for p in predictions:
        cells = [_shown(p.source), f"error: {_shown(p.error)}"] if p.error else rows.pop(0)
        lines.append("  ".join(_padded(cell, width) for cell, width in zip(cells, widths)).rstrip())
    return "\n".join(["  ".join(_padded(name, width) for name, width in zip(header, widths)).rstrip(), *lines]) + "\n"


# ---------------------------------------------------------------- the command

def in_fast_layout(model: InferenceModel) -> InferenceModel:
    """The network's weights in the channels-last layout its batches arrive in
    (evaluation's view functions send them so): oneDNN's convolutions then run about
    2.5x faster on a CPU (benchmarks/predict_vs_onnxruntime.py). The probabilities
    agree with the standard layout's to float rounding, not bit for bit."""
    model.network.to(memory_format=torch.channels_last)
    return model


def refuse_an_output_that_is_read(output, checkpoint, paths: list[str]) -> None:
    """--output must not be the model or one of the images: the predictions would replace
    it (`--output photo.jpg other.jpg`, meant as two images)."""
    from cnnspec.errors import OutputError

    if not output or not os.path.isfile(output):
        return
    written = os.stat(output)

    def is_output(path) -> bool:
        return os.path.exists(path) and os.path.samestat(written, os.stat(path))

    if is_output(checkpoint):
        raise OutputError(f"{output}: is the model being read; give another --output")
    if any(is_output(path) for path in paths):
        raise OutputError(f"{output}: is one of the images being classified; give another --output")


def run_command(args) -> int:
    from cnnspec.errors import UsageError

    if args.top_k < 1:
        raise UsageError(f"--top-k: expected a number >= 1, not {args.top_k}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: expected a number >= 1, not {args.batch_size}")
    from cnnspec.training.device import pick_device, reuse_freed_memory

    if args.output:
        from cnnspec.atomic import check_destination

        check_destination(args.output)  # before the work, not after it
    reuse_freed_memory()  # the images go through in batches: each reuses the last one's memory
    engine = getattr(args, "engine", "auto")
    if str(args.checkpoint).lower().endswith(".onnx"):
        if args.device not in ("auto", "cpu"):
            raise UsageError(f"--device {args.device}: an ONNX model runs on the CPU with onnxruntime; "
                             "give the .pt checkpoint to use another device")
        if args.tta != "none":
            raise UsageError("--tta: an ONNX model runs as exported; test-time augmentation needs the .pt checkpoint")
        if engine == "torch":
            raise UsageError("--engine torch: an ONNX model runs with onnxruntime; give the .pt checkpoint")
        model = OnnxModel(args.checkpoint)
        paths = find_images(args.paths)
        refuse_an_output_that_is_read(args.output, args.checkpoint, paths)
    else:
        if engine == "onnxruntime" and args.tta != "none":
            raise UsageError("--engine onnxruntime runs the model as exported; --tta needs --engine torch or auto")
        # onnxruntime runs on the CPU: with it, --device auto means the CPU
        device = "cpu" if engine == "onnxruntime" and args.device == "auto" else args.device
        model = load_model(args.checkpoint, pick_device(device, "--device", UsageError))
        paths = find_images(args.paths)
        refuse_an_output_that_is_read(args.output, args.checkpoint, paths)
        model = with_engine(model, len(paths), engine, args.tta)
        if isinstance(model, InferenceModel):
            model = in_fast_layout(model)
    top_k = min(args.top_k, len(model.classes))  # no empty class_N columns
    if top_k < args.top_k:
        print(f"note: --top-k {args.top_k}: the model has {top_k} classes, so each row ranks all {top_k}",
              file=sys.stderr)
    predictions = predict_files(model, paths, top_k, args.batch_size, args.tta,
                                progress=len(paths) > args.batch_size)
    text = {"csv": lambda: as_csv(predictions, top_k), "json": lambda: as_json(predictions),
            "table": lambda: as_table(predictions)}[args.format]()
    failed = [p for p in predictions if p.error]
    for p in failed:
        print(f"error: {_shown(p.error)}", file=sys.stderr)
    if args.output:
        from cnnspec.atomic import write_text

        write_text(args.output, text)
        print(f"wrote {len(predictions):,} predictions to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if failed:
        print(f"{len(failed):,} of {len(predictions):,} images could not be read", file=sys.stderr)
    return 1 if failed else 0
