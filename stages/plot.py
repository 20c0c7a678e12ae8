"""Stage 6 of 6, plot: the figures people look at after a run, as PNGs in metrics/plots/.

    python stages/plot.py        (reads params.yaml: plot)

- confusion_matrix.png: counts of true class (rows) against predicted class (columns),
  as metrics/eval_report.json holds them
- learning_curves.png: loss and accuracy per epoch, train against validation, and the learning rate
- misclassified.png:    a grid of wrongly classified test images with true and predicted labels,
                        the most confident mistakes first, as in metrics/mistakes.csv, which lists
                        them all (and file names, for folder and csv datasets)

Reads metrics/eval_report.json and metrics/predictions.csv (evaluate), the DVCLive logs in
metrics/train/plots/metrics (train) and data/prepared (preprocess). Figures are drawn
on matplotlib's Agg canvas (no pyplot, no display) at fixed sizes, and each file is
written atomically.
"""
from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if __package__ in (None, ""):  # `python stages/<name>.py`: import this checkout's cnnspec
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnspec.atomic import atomic_path
from cnnspec.data.datasets import load_prepared
from cnnspec.errors import DataError, TrainingError, end_finished_script, exit_on_user_error
from cnnspec.paths import EVAL_REPORT, EVALUATE_HINT, PARAMS, PLOTS, PREDICTIONS_CSV, PREPARED, TRAIN_CURVES, TRAIN_HINT
from cnnspec.pipeline.params import load_stage_params
from cnnspec.regular_files import not_a_regular_file, read_json

DPI = 100
ANNOTATE_UP_TO = 30  # classes; beyond that the counts in the cells are too small to read


# --- reading ---------------------------------------------------------------

MAX_TABLE_BYTES = 256 << 20  # predictions.csv of a million test images is about 60 MB


def table_rows(path: Path, delimiter: str, error, hint: str) -> tuple[list[str], list[dict]]:
    """(columns, rows) of a CSV or TSV file a stage wrote; a FIFO or a device, a file past
    MAX_TABLE_BYTES, bytes that are not UTF-8 or a field past csv's limit (a file damaged
    or edited by hand) are `error`, naming it."""
    kind = not_a_regular_file(path)
    if kind == "missing":
        raise error(f"{path}: missing; {hint}")
    if kind:
        raise error(f"{path}: is {kind}, not a regular file; {hint} again")
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise error(f"{path}: larger than {MAX_TABLE_BYTES:,} bytes, not a file the stages write; {hint} again")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (UnicodeDecodeError, csv.Error) as failure:
        raise error(f"{path}: not a readable {'TSV' if delimiter == chr(9) else 'CSV'} file "
                    f"({str(failure).splitlines()[0][:80]}); {hint} again") from None


@dataclass
class Predictions:
    """predictions.csv as the plots use it: class indices, and for folder and csv datasets
    each image's path; the predicted class's probability when the file has it."""
    actual: np.ndarray
    predicted: np.ndarray
    paths: list[str] | None
    confidence: np.ndarray | None


def read_predictions(path: Path, classes: list[str]) -> Predictions:
    """predictions.csv, read once: its class names as indices into `classes`, its `path`
    column (else None) and its `confidence` column (else None; a value that is not a number
    counts as 0, so that image comes last)."""
    columns, rows = table_rows(path, ",", DataError, EVALUATE_HINT)
    index_of = {name: index for index, name in enumerate(classes)}
    actual, predicted = [], []
    for row in rows:
        for column, out in (("actual", actual), ("predicted", predicted)):
            name = row.get(column)
            if name not in index_of:
                raise DataError(f"{path}: {column} class {name!r} is not one of the prepared "
                                f"data's classes; {EVALUATE_HINT} again")
            out.append(index_of[name])
    # a row cut short: no name under its thumbnail
    paths = [row.get("path") or "" for row in rows] if "path" in columns else None
    confidence = None
    if "confidence" in columns:
        values = np.array([_number_or_zero(row.get("confidence")) for row in rows], dtype=np.float64)
        confidence = np.nan_to_num(values, nan=0.0)
    return Predictions(np.array(actual, dtype=np.int64), np.array(predicted, dtype=np.int64), paths, confidence)


def _number_or_zero(text: str | None) -> float:
    try:
        return float(text or 0.0)
    except ValueError:
        return 0.0


def short_name(path: str, limit: int = 22) -> str:
    """A file name that fits under a thumbnail: the name, cut in the middle if long."""
    name = Path(path).name
    return name if len(name) <= limit else name[:limit // 2 - 1] + "…" + name[-(limit // 2):]


MAX_PLOTTED = 1e300  # an axis from -1e308 to 1e308 is wider than a float: matplotlib's ticks fail


def read_series(path: Path) -> tuple[list[float], list[float]]:
    """(steps, values) from one DVCLive TSV: columns timestamp, step, <metric name>. NaN and
    infinity are left out of the curve; a finite number beyond MAX_PLOTTED is refused."""
    steps, values = [], []
    columns, rows = table_rows(path, "\t", TrainingError, TRAIN_HINT)
    column = path.stem if path.stem in columns else (columns or [""])[-1]
    for line, row in enumerate(rows, start=2):
        try:
            step, value = float(row["step"]), float(row[column])
        except (KeyError, TypeError, ValueError):
            raise TrainingError(f"{path}: not a DVCLive log (columns step and {column}); "
                                f"{TRAIN_HINT} again") from None
        for number in (step, value):
            if math.isfinite(number) and abs(number) > MAX_PLOTTED:
                raise TrainingError(f"{path}:{line}: {number:g} is beyond any step or {column} a run logs "
                                    f"(at most {MAX_PLOTTED:g} in size); {TRAIN_HINT} again")
        steps.append(step)
        values.append(value)
    return steps, values


def read_confusion_matrix(path: Path, classes: list[str]) -> np.ndarray:
    """The confusion matrix the evaluate stage wrote to eval_report.json, for these classes."""
    if not path.is_file():
        raise DataError(f"{path}: missing; {EVALUATE_HINT}")
    try:
        report = read_json(path)
        counts = np.array(report["confusion_matrix"], dtype=np.int64)
        report_classes = list(report["classes"])
    except (ValueError, KeyError, TypeError, OverflowError):
        raise DataError(f"{path}: no confusion_matrix and classes; {EVALUATE_HINT} again") from None
    if report_classes != classes or counts.shape != (len(classes), len(classes)):
        raise DataError(f"{path}: made for other classes than the prepared data's; {EVALUATE_HINT} again")
    return counts


# --- figures ---------------------------------------------------------------

def confusion_figure(counts: np.ndarray, classes: list[str]) -> Figure:
    side = min(20.0, max(6.0, 0.5 * len(classes) + 3))  # inches: 600 to 2000 px
    figure = Figure(figsize=(side, side), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues", interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8)
    ticks = range(len(classes))
    axes.set_xticks(ticks, classes, rotation=45, ha="right", parse_math=False)
    axes.set_yticks(ticks, classes, parse_math=False)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"Confusion matrix ({int(counts.sum())} test images, "
                   f"accuracy {_accuracy(counts):.2%})")
    if len(classes) <= ANNOTATE_UP_TO:
        dark = counts.max() / 2
        for (row, column), count in np.ndenumerate(counts):
            axes.text(column, row, str(count), ha="center", va="center", fontsize=9,
                      color="white" if count > dark else "black")
    return figure


def _accuracy(counts: np.ndarray) -> float:
    return counts.trace() / counts.sum() if counts.sum() else 0.0


def learning_curves_figure(logs: Path) -> Figure:
    # Fixed margins: the tick labels here are numbers of a known width, and a layout
    # engine's extra drawing pass would take a third of the figure's time.
    figure = Figure(figsize=(15, 4.5), dpi=DPI)
    figure.subplots_adjust(left=0.05, right=0.99, bottom=0.11, top=0.93, wspace=0.22)
    loss_axes, accuracy_axes, lr_axes = figure.subplots(1, 3)
    for metric, axes in (("loss", loss_axes), ("accuracy", accuracy_axes)):
        for split, style in (("train", "-o"), ("val", "-s")):
            if split == "val" and not (logs / "val").is_dir():
                continue  # trained with data.val_split: 0: no validation curves
            steps, values = read_series(logs / split / f"{metric}.tsv")
            axes.plot(_epochs(steps), values, style, markersize=3, label=split)
        axes.set_title(metric)
        axes.legend()
    steps, values = read_series(logs / "lr.tsv")
    lr_axes.plot(_epochs(steps), values, "-", color="tab:green")
    lr_axes.set_title("learning rate")
    for axes in (loss_axes, accuracy_axes, lr_axes):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    return figure


def _epochs(steps: list[float]) -> list[float]:
    # DVCLive counts steps from 0; one step is one epoch
    return [step + 1 for step in steps]


def misclassified_figure(images: np.ndarray, actual: np.ndarray, predicted: np.ndarray,
                         classes: list[str], count: int, paths: list[str] | None = None,
                         confidence: np.ndarray | None = None) -> Figure:
    """`count` mistakes, each titled with its file name when the images came from files:
    the most confident first when `confidence` is given (metrics/mistakes.csv's order, where
    a mislabelled image tends to sit), else the first in test-set order. Not simply the first
    in test-set order: an own-image test set is sorted by class, and the grid showed the
    mistakes of the first two or three classes only."""
    wrong = np.flatnonzero(actual != predicted)
    if confidence is not None:
        wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    wrong = wrong[:count]
    if len(wrong) == 0:
        figure = Figure(figsize=(6.0, 2.0), dpi=DPI)
        figure.text(0.5, 0.5, "no misclassified test images", ha="center", va="center", fontsize=14)
        return figure
    # One picture of all the thumbnails, white between them and above each for its title:
    # drawing one image instead of a grid of axes takes a fifth of the time.
    columns = math.ceil(math.sqrt(len(wrong)))
    cell = min(1.8, 16 / columns)  # inches, so the grid stays under 2000 px wide
    image_height, image_width = images.shape[2:]
    gap = max(1, round(0.05 * image_width))  # pixels of the images' own size
    inches_per_pixel = cell / (image_width + gap)
    title_inches = (3 if paths is not None else 2) * 8 * 1.3 / 72 + 0.05  # lines of 8-point text
    title_pixels = math.ceil(title_inches / inches_per_pixel)
    mosaic = _mosaic(images, wrong, columns, gap, title_pixels)
    mosaic_width, mosaic_height = columns * cell, mosaic.shape[0] * inches_per_pixel
    width, height = max(6.0, mosaic_width), max(2.0, mosaic_height)
    figure = Figure(figsize=(width, height), dpi=DPI)
    axes = figure.add_axes(((1 - mosaic_width / width) / 2, (1 - mosaic_height / height) / 2,
                            mosaic_width / width, mosaic_height / height))
    axes.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
    axes.axis("off")
    pitch_height, pitch_width = image_height + title_pixels, image_width + gap
    for position, index in enumerate(wrong):
        row, column = divmod(position, columns)
        title = f"true: {classes[actual[index]]}\npred: {classes[predicted[index]]}"
        if paths is not None:
            title = f"{short_name(paths[index])}\n{title}"
        image_top = row * pitch_height + title_pixels - 0.5  # imshow centres pixels on integers
        axes.annotate(title, ((column + 0.5) * pitch_width - 0.5, image_top), xytext=(0, 4),
                      textcoords="offset points", ha="center", va="baseline", fontsize=8, color="darkred",
                      parse_math=False)
    return figure


def _mosaic(images: np.ndarray, chosen: np.ndarray, columns: int, gap: int, title_pixels: int) -> np.ndarray:
    """The chosen (C, H, W) uint8 images on a white canvas, `columns` to a row, `gap`
    pixels apart and `title_pixels` below the one above: (rows * (H + title_pixels),
    columns * (W + gap)), with a last axis of 3 for colour images."""
    channels, height, width = images.shape[1:]
    pitch_height, pitch_width = height + title_pixels, width + gap
    rows = math.ceil(len(chosen) / columns)
    mosaic = np.full((rows * pitch_height, columns * pitch_width) + (() if channels == 1 else (channels,)),
                     255, dtype=np.uint8)
    for position, index in enumerate(chosen):
        row, column = divmod(position, columns)
        top, left = (row + 1) * pitch_height - height, column * pitch_width + gap // 2
        picture = images[index].transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
        mosaic[top:top + height, left:left + width] = picture[:, :, 0] if channels == 1 else picture
    return mosaic


def png_bytes(figure: Figure) -> bytes:
    """The figure drawn as a PNG. matplotlib lays a figure out and draws it only here, so
    this is where a figure fails, if it does."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def save_png(png: bytes, path: Path) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(png)


# --- the stage -------------------------------------------------------------

@exit_on_user_error
def main() -> None:
    params = load_stage_params(PARAMS, sections=["plot"])["plot"]
    data = load_prepared(PREPARED, mmap_mode="r")  # only the test images are read from disk
    classes = list(data["meta"]["classes"])
    predictions = read_predictions(PREDICTIONS_CSV, classes)
    counts = read_confusion_matrix(EVAL_REPORT, classes)
    for path, count in ((PREDICTIONS_CSV, len(predictions.actual)), (EVAL_REPORT, int(counts.sum()))):
        if count != len(data["test_labels"]):
            raise DataError(f"{path}: {count} test images counted for {len(data['test_labels'])} "
                            f"in {PREPARED}; {EVALUATE_HINT} again")

    # Draw all three before writing any, so a bad input leaves the old set whole.
    figures = {
        "confusion_matrix.png": png_bytes(confusion_figure(counts, classes)),
        "learning_curves.png": png_bytes(learning_curves_figure(TRAIN_CURVES)),
        "misclassified.png": png_bytes(misclassified_figure(data["test_images"], predictions.actual,
                                                            predictions.predicted, classes, params["misclassified"],
                                                            predictions.paths, predictions.confidence)),
    }
    for name, png in figures.items():
        save_png(png, PLOTS / name)
    *first, last = figures
    print(f"wrote {PLOTS}/{', '.join(first)} and {last}")  # one line, as evaluate's


if __name__ == "__main__":
    main()
    end_finished_script()
