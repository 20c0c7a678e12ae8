"""Datasets from the user's own image files: a folder of class subfolders or a CSV
manifest, scanned and split (listing.py), sized from a sample of image headers
(image_sample.py), decoded in parallel and written chunk by chunk.

    prepare_image_dataset(data_params, "data/prepared")

The result is the prepared format every later stage reads (docs/architecture.md):
{split}_images.npy uint8 (N, C, H, W), {split}_labels.npy int64, meta.json. The image
files are written through the file, a window of decoded images at a time, never the
whole array: memory stays at one window however large the dataset.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from cnnspec import atomic
from cnnspec.atomic import atomic_folder
from cnnspec.data.datasets import FILES_JSON, SPLITS, histogram_mean_std
from cnnspec.data.image_sample import (
    auto_channels,
    auto_image_size,
    beyond_the_sample,
    enlarge_note,
    resize_note,
    sample_images,
    stretch_warning,
)
from cnnspec.data.images import GRAY_MODES, ImageReadError, decode_image
from cnnspec.data.listing import Listing, assign_splits, scan_csv, scan_folder
from cnnspec.errors import DataError, DiskFullError, listed_names
from cnnspec.progress import Progress

BATCH_IMAGES = 256          # images one worker decodes per task
WINDOW_BYTES = 32 << 20     # decoded pixels in flight at once: "one chunk"
SHOWN_BAD_IMAGES = 5        # skipped images named in the log

# ---------------------------------------------------------------------------------------
# Decoding, in parallel, in order, a window at a time.

@dataclass
class Changed:
    """How many decoded images were resized, and how many colour ones read as gray."""

    resized: int = 0
    lost_colour: int = 0

    def add(self, other: Changed) -> None:
        self.resized += other.resized
        self.lost_colour += other.lost_colour


def _decode_batch(paths: list[str], names: list[str], channels: int, size, resize: str):
    """Worker task: (uint8 (n_good, C, H, W), positions of the good ones, errors, Changed)."""
    good, positions, errors, changed = [], [], [], Changed()
    for position, (path, name) in enumerate(zip(paths, names)):
        try:
            decoded = decode_image(path, channels, size, resize)
        except ImageReadError as error:
            reason = str(error).removeprefix(f"{path}: ")  # read_image names the path first
            errors.append(f"{name}: {reason}")
            continue
        good.append(decoded.pixels)
        positions.append(position)
        changed.resized += decoded.resized
        changed.lost_colour += decoded.lost_colour
    height, width = size
    array = np.stack(good) if good else np.zeros((0, channels, height, width), np.uint8)
    return array, positions, errors, changed


class _InlineExecutor:
    """The executor interface, run in this process (one core, or tiny datasets)."""

    def submit(self, function, *args):
        future = concurrent.futures.Future()
        future.set_result(function(*args))
        return future


@contextlib.contextmanager
def decode_pool(workers: int, inline: bool):
    """The executor that decodes images: this process when `inline`, else `workers`
    processes. Leaving early (an error, Ctrl-C, SIGTERM) ends every worker it started at
    once, also one whose start the signal interrupted: a worker left waiting for work
    would keep the stage alive, and its output pipes open, for ever."""
    if inline or workers <= 1:
        yield _InlineExecutor()
        return
    before = set(multiprocessing.active_children())
    executor = concurrent.futures.ProcessPoolExecutor(max_workers=workers,
                                                      initializer=_quiet_worker)
    try:
        yield executor
        executor.shutdown(wait=True)
    except BaseException:
        started = set(multiprocessing.active_children()) - before
        for process in started:  # SIGKILL: a worker holds nothing to clean up
            process.kill()
        # The pool's own thread finds its workers gone and reaps them; joining them here
        # while that thread runs would race it for their exit statuses (a worker could look
        # alive after its end), so it finishes first. Then the rest: one the pool never knew.
        executor.shutdown(wait=True, cancel_futures=True)
        for process in started:
            process.join(timeout=5)
        raise


def _quiet_worker() -> None:
    """A decode worker leaves signals to the stage: Ctrl-C reaches the whole process
    group, but only the stage reacts (and ends its workers), and SIGTERM (from the stage,
    or from the kernel when the stage dies) ends a worker without a traceback."""
    import signal

    from cnnspec.errors import die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _BadImages:
    def __init__(self, policy: str):
        self.policy, self.count, self.first = policy, 0, []

    def add(self, errors: list[str]) -> None:
        if errors and self.policy == "fail":
            raise ImageReadError(f"{errors[0]} (data.bad_images: fail; -S data.bad_images=skip leaves such "
                                 "images out)")
        self.count += len(errors)
        self.first.extend(errors[:SHOWN_BAD_IMAGES - len(self.first)])


def _pixel_histogram(images: np.ndarray, histogram: np.ndarray) -> None:
    """Add the per-channel counts of the 256 pixel values, ~1 MB of pixels at a time."""
    step = max(1, (1 << 20) // max(1, images[0].size if len(images) else 1))
    for start in range(0, len(images), step):
        block = images[start:start + step]
        for channel in range(images.shape[1]):
            histogram[channel] += np.bincount(block[:, channel].ravel(), minlength=256)


WORKER_DIED = ("data.source: a decoding worker died (killed, most likely out of memory while decoding a "
               "very large image); free some memory, or shrink or remove the largest images, and run "
               "again (data/prepared is unchanged)")


def write_split(path: Path, listing: Listing, indices: np.ndarray, shape, options: dict,
                executor, bad: _BadImages, histogram: np.ndarray | None,
                changed: Changed | None = None, progress: Progress | None = None) -> np.ndarray:
    """Decode the images at `indices` into `path` (.npy, shape (n,) + shape), in order,
    counting what decoding changed into `changed`. Returns the positions (into `indices`)
    of the images written (bad ones skipped); `progress` is told of each batch decoded."""
    changed = Changed() if changed is None else changed
    progress = Progress("", None, enabled=False) if progress is None else progress
    try:
        return _write_split(path, listing, indices, shape, options, executor, bad, histogram, changed, progress)
    except BrokenProcessPool:
        raise DataError(WORKER_DIED) from None
    except OSError as error:
        if atomic.disk_is_full(error, path.parent):
            raise DiskFullError(path) from None
        raise


def _write_split(path, listing, indices, shape, options, executor, bad, histogram, changed, progress):
    channels, height, width = shape
    row_bytes = channels * height * width
    created = npy_format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(indices), *shape))
    header_bytes = created.offset
    del created  # the header and the file's size are set; the pixels go in by pwrite, so
    #              no page of the file stays mapped (mapped pages would count as our memory)
    batch = max(1, min(BATCH_IMAGES, WINDOW_BYTES // row_bytes // 8))
    window = max(1, WINDOW_BYTES // (batch * row_bytes))
    kept, written = [], 0
    tasks = collections.deque()
    starts = iter(range(0, len(indices), batch))

    def submit(start):
        chosen = indices[start:start + batch]
        tasks.append((start, executor.submit(
            _decode_batch, [listing.paths[i] for i in chosen], [listing.name(i) for i in chosen],
            channels, (height, width), options["resize"])))

    with open(path, "r+b") as file:
        for start in starts:
            submit(start)
            if len(tasks) >= window:
                break
        while tasks:
            start, future = tasks.popleft()
            array, positions, errors, batch_changed = future.result()
            changed.add(batch_changed)
            next_start = next(starts, None)
            if next_start is not None:
                submit(next_start)
            bad.add(errors)
            progress.update(min(batch, len(indices) - start))
            if len(array):
                os.pwrite(file.fileno(), array.tobytes(), header_bytes + written * row_bytes)
                written += len(array)
                kept.extend(start + p for p in positions)
                if histogram is not None:
                    _pixel_histogram(array, histogram)
    if written < len(indices):
        _shrink_npy(path, header_bytes, (written, *shape), row_bytes)
    return np.array(kept, dtype=np.int64)


def _shrink_npy(path: Path, header_bytes: int, shape, row_bytes: int) -> None:
    """Rewrite a .npy's header for fewer rows and cut the file (after skipped images)."""
    import io

    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    if len(header.getvalue()) != header_bytes:  # the header's padding absorbs a shorter count
        raise DataError(f"{path}: cannot shrink the .npy header")  # never seen: 64-byte padding
    with open(path, "r+b") as file:
        file.write(header.getvalue())
        file.truncate(header_bytes + shape[0] * row_bytes)


# ---------------------------------------------------------------------------------------
# The whole preprocess of a folder or CSV dataset.

def scan(data: dict) -> Listing:
    source = data["source"]
    if data["dataset"] == "folder":
        return scan_folder(source)
    if data["dataset"] == "csv":
        return scan_csv(source, data["csv"])
    raise ValueError(f"not a user dataset: {data['dataset']}")


def prepare_image_dataset(data: dict, out_folder, workers: int | None = None, log=print) -> dict:
    """Scan, split, decode and write `out_folder` (all files or none). Returns meta.json."""
    listing = scan(data)
    classes, splits = assign_splits(listing, data["val_split"], data["test_split"], data["seed"],
                                    data.get("classes"), strict=data.get("bad_images") == "fail")
    sample = sample_images(listing.paths)
    height, width = auto_image_size(sample) if data["image_size"] == "auto" else data["image_size"]
    channels = auto_channels(sample) if data["channels"] == "auto" else data["channels"]
    _say_what_the_sample_shows(sample, data, (height, width), channels, len(listing.paths), log)
    channels_auto = data["channels"] == "auto"
    data = {**data, "image_size": [height, width], "channels": channels}
    shape = (channels, height, width)
    workers = default_workers() if workers is None else workers
    small = len(listing.paths) < 4 * BATCH_IMAGES
    bad = _BadImages(data["bad_images"])
    histogram = np.zeros((shape[0], 256), dtype=np.int64)
    changed = Changed()
    counts, per_class, files = {}, {}, {}
    with atomic_folder(out_folder) as temporary, decode_pool(workers, small) as executor, \
            Progress("decoding", sum(len(splits[split][0]) for split in SPLITS)) as progress:
        for split in SPLITS:
            indices, labels = splits[split]
            kept = write_split(temporary / f"{split}_images.npy", listing, indices, shape, data,
                               executor, bad, histogram if split == "train" else None, changed, progress)
            labels = labels[kept]
            atomic.save_numpy(temporary / f"{split}_labels.npy", labels)
            files[split] = [source_relative(listing.paths[i], data) for i in indices[kept]]
            counts[split] = int(len(labels))
            per_class[split] = np.bincount(labels, minlength=len(classes))
        if bad.count:  # before the errors below, which these may explain
            first = "first: " if bad.count > len(bad.first) else ""
            log(f"skipped {bad.count:,} unreadable image{'s' if bad.count != 1 else ''} (data.bad_images: skip): "
                + first + "; ".join(bad.first))
        resized, lost_colour = beyond_the_sample(sample, (height, width), data["resize"], channels_auto,
                                                 changed.resized, changed.lost_colour)
        if resized:
            log(resized)
        if lost_colour:
            print(lost_colour, file=sys.stderr)
        if counts["train"] == 0:
            raise DataError("data.source: no readable training images")
        missing = [classes[i] for i in np.flatnonzero(per_class["train"] == 0)]
        if missing:
            raise DataError(f"data.source: class '{missing[0]}' has no readable training image left")
        mean, std = histogram_mean_std(histogram)
        meta = {
            "dataset": data["dataset"],
            "source": str(data["source"]),
            "classes": classes,
            "input_shape": list(shape),
            "image_size": [height, width],
            "resize": data["resize"],
            "channels": shape[0],
            "mean": mean,
            "std": std,
            "counts": counts,
            "skipped_images": bad.count,
        }
        atomic.write_json(temporary / "meta.json", meta)
        atomic.write_json(temporary / FILES_JSON, files)
    total = sum(per_class.values())
    log("images per class: " + ", ".join(f"{listed_names([name])} {int(n):,}" for name, n in zip(classes, total)))
    return meta


def _say_what_the_sample_shows(sample, data: dict, size, channels: int, images: int, log) -> None:
    """The lines printed before decoding: the size and channels chosen and how the images
    are resized, with image_sample's warning and note on what the sampled headers show."""
    height, width = size
    if not sample and "auto" in (data["image_size"], data["channels"]):
        log(f"none of the sampled images could be read: data.image_size {height}x{width}, data.channels "
            f"{channels} by default (decoding names the files)")
        return
    log(resize_note(sample, size, data["resize"], data["image_size"] == "auto"))
    stretched = stretch_warning(sample, size, data["resize"])
    if stretched:
        print(stretched, file=sys.stderr)
    enlarged = enlarge_note(sample, size, images, channels)
    if enlarged:
        log(enlarged)
    if data["channels"] == "auto":
        gray = ("every image is grayscale" if len(sample) == images
                else f"the {len(sample)} images sampled across the dataset are grayscale")
        log(f"channels: {channels} (data.channels: auto; {gray if channels == 1 else colour_count(sample)})")


def colour_count(sample) -> str:
    """Why auto chose 3: 'colour images', and when grayscale ones are among them (gray
    scans, some saved as RGB JPEGs), how many of each and the setting that reads all as gray."""
    colour = sum(mode not in GRAY_MODES for _, _, mode in sample)
    if colour == len(sample):
        return "colour images"
    return (f"{colour:,} of the {len(sample):,} images sampled are colour files, the others grayscale; "
            f"-S data.channels=1 reads every image as grayscale")


def source_relative(path: str, data: dict) -> str:
    """How the prepared file list names an image: relative to data.source's folder
    (the folder itself, or the CSV's folder), as the user wrote it in their tree."""
    root = Path(data["source"]) if data["dataset"] == "folder" else Path(data["source"]).parent
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()
