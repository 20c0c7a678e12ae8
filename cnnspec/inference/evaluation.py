"""Score a trained model on the test split: accuracy, loss, per-class precision /
recall / F1 (as sklearn's classification_report computes them), the confusion
matrix, with optional test-time augmentation.

    probabilities = predict_probabilities(model, images, mean, std, tta="flip", batch_size="auto")
    report = classification_report(labels, probabilities, classes)

`tta` and `batch_size` are params.yaml's `evaluate` values (the schema holds their
defaults); the device is the one chooser training and predict use (training/device.py).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnnspec.data.datasets import Normalize, load_prepared
from cnnspec.errors import DataError, TrainingError
from cnnspec.paths import TRAIN_HINT
from cnnspec.progress import Progress
from cnnspec.training.device import inference_batch, pick_device

GPU_BATCH = 2000  # evaluate.batch_size: auto on a GPU
DECIMALS = 4  # metrics/eval.json is diffed by people; four digits are enough to read
SMALLEST_PROBABILITY = 1e-12  # keeps log(0) out of the loss when a model is certain and wrong


# --- test-time augmentation ------------------------------------------------
# Each view function takes a normalized batch (N, C, H, W) and returns the
# class probabilities averaged over its views.

def probabilities_plain(model, batch):
    # channels-last (NHWC), the layout training uses: oneDNN's and cuDNN's faster convolutions
    return model(batch.contiguous(memory_format=torch.channels_last)).float().softmax(dim=1)


def probabilities_flip(model, batch):
    """The image and its horizontal mirror, equally weighted."""
    return 0.5 * (probabilities_plain(model, batch) + probabilities_plain(model, batch.flip(-1)))


def probabilities_flip_translate(model, batch):
    """airbench's six views: flip x {no shift, shifted one pixel down-right,
    one pixel up-left} with reflect padding; the unshifted pair weighs half,
    each shifted pair a quarter."""
    height, width = batch.shape[-2:]
    padded = F.pad(batch, (1, 1, 1, 1), mode="reflect")
    shifted_down_right = padded[:, :, 0:height, 0:width]
    shifted_up_left = padded[:, :, 2:height + 2, 2:width + 2]
    return (0.5 * probabilities_flip(model, batch)
            + 0.25 * probabilities_flip(model, shifted_down_right)
            + 0.25 * probabilities_flip(model, shifted_up_left))


TTA = {
    "none": probabilities_plain,
    "flip": probabilities_flip,
    "flip_translate": probabilities_flip_translate,
}


@torch.inference_mode()
def predict_probabilities(model, images: np.ndarray, mean, std, tta: str, batch_size: int | str,
                          device=None, progress: bool = False) -> np.ndarray:
    """Class probabilities (N, num_classes) as float64 for uint8 images (N, C, H, W).

    Images travel to the device one batch at a time and are normalized there
    with the training split's per-channel `mean` and `std` (pixel/255 units), by
    the same Normalize as in training. `device` None: CUDA when there is one.
    `batch_size` "auto": cache-sized on a CPU, GPU_BATCH on a GPU (`inference_batch`).
    `progress`: say how far it is on stderr (cnnspec.progress) when there is more than
    one batch; each batch's probabilities come to the CPU anyway, so it adds no sync.
    """
    views = TTA[tta]
    device = torch.device(device) if device is not None else pick_device("auto")
    if batch_size == "auto":
        batch_size = inference_batch(device, GPU_BATCH)
    model.eval().to(device)
    normalize = Normalize(mean, std, device)
    outputs = []
    model.to(memory_format=torch.channels_last)  # as in training; put back below
    try:
        with Progress("evaluating", len(images), unit="images",
                      enabled=progress and len(images) > batch_size) as bar:
            for start in range(0, len(images), batch_size):
                piece = np.array(images[start:start + batch_size])  # a copy: mmap is read-only
                batch = torch.from_numpy(piece).to(device)
                batch = normalize(batch)
                outputs.append(views(model, batch).double().cpu())
                bar.update(len(batch))
    finally:
        model.to(memory_format=torch.contiguous_format)
    if not outputs:
        return np.zeros((0, 0))
    return torch.cat(outputs).numpy()


# --- metrics ---------------------------------------------------------------

def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j] = how many images of class i were predicted as class j."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (actual, predicted), 1)
    return counts


def mean_log_loss(actual: np.ndarray, probabilities: np.ndarray) -> float:
    """Cross-entropy of the (averaged) probabilities: mean of -log p[true class]."""
    chosen = probabilities[np.arange(len(actual)), actual]
    return float(-np.log(np.maximum(chosen, SMALLEST_PROBABILITY)).mean())


def top_k_accuracy(actual: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the k most probable (ties broken by
    class index, as argsort does)."""
    if not len(actual):
        return 0.0
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float((top == actual[:, None]).any(axis=1).mean())


def _ratio(numerator: float, denominator: float) -> float:
    # sklearn's zero_division=0: a class never predicted has precision 0
    return float(numerator) / float(denominator) if denominator else 0.0


def per_class_scores(counts: np.ndarray) -> list[dict]:
    scores = []
    for index in range(len(counts)):
        true_positives = counts[index, index]
        precision = _ratio(true_positives, counts[:, index].sum())
        recall = _ratio(true_positives, counts[index, :].sum())
        scores.append({
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": int(counts[index, :].sum()),
        })
    return scores


def averages(scores: list[dict]) -> tuple[dict, dict]:
    """The macro (every class counts the same) and support-weighted averages."""
    support = np.array([score["support"] for score in scores], dtype=np.float64)
    total = int(support.sum())
    macro, weighted = {}, {}
    for name in ("precision", "recall", "f1"):
        values = np.array([score[name] for score in scores])
        macro[name] = float(values.mean()) if len(values) else 0.0
        weighted[name] = float((values * support).sum() / total) if total else 0.0
    macro["support"] = weighted["support"] = total
    return macro, weighted


def classification_report(actual: np.ndarray, probabilities: np.ndarray, classes: list[str],
                          tta: str = "none") -> dict:
    """Everything metrics/eval.json holds, with floats rounded to DECIMALS."""
    actual = np.asarray(actual, dtype=np.int64)
    predicted = probabilities.argmax(axis=1)
    counts = confusion_matrix(actual, predicted, len(classes))
    scores = per_class_scores(counts)
    macro, weighted = averages(scores)
    report = {
        "accuracy": _ratio(int(counts.trace()), len(actual)),
        **({"top5_accuracy": top_k_accuracy(actual, probabilities, 5)} if len(classes) > 5 else {}),
        "loss": mean_log_loss(actual, probabilities),
        "tta": tta,
        "num_test": len(actual),
        "classes": list(classes),
        "per_class": dict(zip(classes, scores)),
        "macro_avg": macro,
        "weighted_avg": weighted,
        "confusion_matrix": counts.tolist(),
    }
    return rounded(report)


def rounded(value):
    if isinstance(value, float):
        return round(value, DECIMALS) if math.isfinite(value) else value
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


# --- the whole evaluation -------------------------------------------------

def evaluate_checkpoint(model_path, prepared, *, tta: str, batch_size: int | str, device=None,
                        with_probabilities: bool = False, progress: bool = False):
    """Score a checkpoint on the prepared test split (`tta`, `batch_size`: params.yaml's
    evaluate section; `progress`: as predict_probabilities).

    Returns (report, actual labels, predicted labels), and the class probabilities
    (N, classes) after them when `with_probabilities`."""
    from cnnspec.models.checkpoint import load_network

    model_path = Path(model_path)
    if not model_path.is_file():
        raise TrainingError(f"{model_path}: missing; {TRAIN_HINT}")
    device = torch.device(device) if device is not None else pick_device("auto")
    model, checkpoint = load_network(model_path, device)  # a damaged model is named before the data is read
    data = load_prepared(prepared, mmap_mode="r")  # only the test split is read from disk
    check_model_fits_data(checkpoint, data["meta"], model_path, prepared)

    images, actual = data["test_images"], np.asarray(data["test_labels"], dtype=np.int64)
    probabilities = predict_probabilities(model, images, checkpoint["mean"], checkpoint["std"],
                                          tta, batch_size, device, progress)
    broken = int((~np.isfinite(probabilities)).any(axis=1).sum())
    if broken:
        raise TrainingError(f"{model_path}: the model outputs NaN or infinity for {broken} test "
                            f"images; the weights are broken, {TRAIN_HINT} again")
    report = classification_report(actual, probabilities, checkpoint["classes"], tta)
    if with_probabilities:
        return report, actual, probabilities.argmax(axis=1), probabilities
    return report, actual, probabilities.argmax(axis=1)


def check_model_fits_data(checkpoint: dict, meta: dict, model_path, prepared) -> None:
    for key in ("classes", "input_shape"):
        if list(checkpoint[key]) != list(meta[key]):
            raise DataError(f"{model_path} was trained on {key} {list(checkpoint[key])} but "
                            f"{prepared} holds {list(meta[key])}; {TRAIN_HINT} on this data")


# --- outputs ---------------------------------------------------------------

def predictions_csv(actual: np.ndarray, predicted: np.ndarray, classes: list[str],
                    probabilities: np.ndarray | None = None, paths: list[str] | None = None) -> str:
    """`index,actual,predicted` with class names (what DVC's confusion template reads),
    then `confidence` (the predicted class's probability) and `path` (the image file,
    relative to data.source, for folder and csv datasets) when given."""
    header = ["index", "actual", "predicted"] + (["confidence"] if probabilities is not None else []) \
        + (["path"] if paths is not None else [])
    lines = [",".join(header)]
    for index, (a, p) in enumerate(zip(actual, predicted)):
        fields = [str(index), _csv_field(classes[a]), _csv_field(classes[p])]
        if probabilities is not None:
            fields.append(f"{probabilities[index, p]:.{DECIMALS}f}")
        if paths is not None:
            fields.append(_csv_field(paths[index]))
        lines.append(",".join(fields))
    return "\n".join(lines) + "\n"


def mistakes_csv(actual: np.ndarray, probabilities: np.ndarray, classes: list[str],
                 paths: list[str] | None = None) -> str:
    """The wrongly classified test images, the most confident mistakes first (fastai's
    top losses): a mislabelled file tends to sit at the top. Columns `path` (when the
    files are known), `index`, `actual`, `predicted`, `confidence` (of the wrong class)
    and `actual_probability`."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != actual)
    confidence = probabilities[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")]
    header = (["path"] if paths is not None else []) + ["index", "actual", "predicted", "confidence",
                                                       "actual_probability"]
    lines = [",".join(header)]
    for index in order:
        fields = [_csv_field(paths[index])] if paths is not None else []
        fields += [str(index), _csv_field(classes[actual[index]]), _csv_field(classes[predicted[index]]),
                   f"{probabilities[index, predicted[index]]:.{DECIMALS}f}",
                   f"{probabilities[index, actual[index]]:.{DECIMALS}f}"]
        lines.append(",".join(fields))
    return "\n".join(lines) + "\n"


def _csv_field(text: str) -> str:
    if any(character in text for character in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def report_table(report: dict) -> str:
    """The report as text, laid out like sklearn's classification_report."""
    width = max([len(name) for name in report["classes"]] + [len("weighted avg")])
    header = f"{'':>{width}}  precision    recall  f1-score   support"
    rows = [header, ""]
    for name, score in report["per_class"].items():
        rows.append(_table_row(name, score, width))
    rows.append("")
    rows.append(f"{'accuracy':>{width}}  {'':>9} {'':>9} {report['accuracy']:>9.4f} "
                f"{report['num_test']:>9}")
    rows.append(_table_row("macro avg", report["macro_avg"], width))
    rows.append(_table_row("weighted avg", report["weighted_avg"], width))
    rows.append(f"{'loss':>{width}}  {report['loss']:>9.4f}   (test-time augmentation: {report['tta']})")
    return "\n".join(rows)


def _table_row(name: str, score: dict, width: int) -> str:
    return (f"{name:>{width}}  {score['precision']:>9.4f} {score['recall']:>9.4f} "
            f"{score['f1']:>9.4f} {score['support']:>9}")
