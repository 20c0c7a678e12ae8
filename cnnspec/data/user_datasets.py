"""Datasets from the user's own image files: a folder of class subfolders or a CSV
manifest, scanned, split, decoded in parallel and written chunk by chunk.

    prepare_image_dataset(data_params, "data/prepared")

Layouts (docs/datasets.md):
- folder: `root/<class>/<any depth>/<image>`, or the same under `root/train/`,
  `root/test/` and optionally `root/val/`.
- csv: a manifest with a path column and a label column (and optionally a split
  column of train / val / test); paths are relative to the CSV's folder.

The result is the prepared format every later stage reads (docs/architecture.md):
{split}_images.npy uint8 (N, C, H, W), {split}_labels.npy int64, meta.json. The image
files are written through the file, a window of decoded images at a time, never the
whole array: memory stays at one window however large the dataset.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import multiprocessing
import os
import sys
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from cnnspec import atomic
from cnnspec.atomic import atomic_folder
from cnnspec.data.datasets import FILES_JSON, SPLITS, histogram_mean_std, stratified_split, val_fraction
from cnnspec.data.images import (
    GRAY_MODES,
    IMAGE_SUFFIXES,
    ROTATING_ORIENTATIONS,
    ImageReadError,
    decode_image,
    exif_orientation,
    is_gray,
    is_image_file,
    open_image,
)
from cnnspec.errors import DataError, DiskFullError, control_character, listed_names
from cnnspec.regular_files import not_a_regular_file

BATCH_IMAGES = 256          # images one worker decodes per task
WINDOW_BYTES = 32 << 20     # decoded pixels in flight at once: "one chunk"
SHOWN_BAD_IMAGES = 5        # skipped images named in the log
SIZE_SAMPLE = 256           # image headers read, spread over the dataset, for image_size and channels: auto


@dataclass
class Listing:
    """What a source holds, before decoding: one entry per image (plain strings, about
    150 bytes an image: the only memory that grows with the dataset)."""

    paths: list[str] = field(default_factory=list)    # checked to lie in the source
    labels: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)   # "train" | "val" | "test" | "" (not given)
    places: list[str] | None = None                   # csv: "labels.csv:12: a.jpg" for messages

    def add(self, path, label: str, split: str, place: str | None = None) -> None:
        _refuse_a_name_not_in_utf8(Path(path))
        self.paths.append(str(path))
        self.labels.append(sys.intern(label))
        self.splits.append(split)
        if place is not None:
            self.places = [] if self.places is None else self.places
            self.places.append(place)

    def name(self, index: int) -> str:
        """How messages name an image: its path, or its CSV line and path."""
        return self.places[index] if self.places is not None else self.paths[index]


def _refuse_a_name_not_in_utf8(path: Path) -> None:
    """A file or folder name whose bytes are not UTF-8 (Python holds them as surrogates)
    cannot be written to meta.json or printed by the later stages: refuse it here, named
    with its bytes escaped."""
    for depth, part in enumerate(path.parts, start=1):
        try:
            part.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(Path(*path.parts[:depth])).decode("utf-8", "backslashreplace")
            raise DataError(f"{shown}: the name is not valid UTF-8 text; rename it (cnnspec writes "
                            "class names and paths to meta.json and its reports as UTF-8)") from None


# ---------------------------------------------------------------------------------------
# Paths that must stay inside the source.

def _allowed_roots(root: Path) -> list[Path]:
    """The source itself, and a DVC cache above it (`cache.type: symlink` links there)."""
    roots = [root.resolve()]
    for parent in [Path.cwd(), *Path.cwd().parents]:
        if (parent / ".dvc").is_dir():
            roots.append((parent / ".dvc" / "cache").resolve())
            break
    return roots


def _inside(path: Path, roots: list[Path]) -> bool:
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError):  # a symlink loop leads nowhere: read_image names it
        return True
    return any(resolved == root or root in resolved.parents for root in roots)


def _escape_error(name: str, where: str) -> DataError:
    return DataError(f"{name}: {where} leads outside data.source; copy the image into it instead")


# ---------------------------------------------------------------------------------------
# Folder layout.

def _images_under(folder: Path, roots: list[Path], display: Path) -> tuple[list[Path], int]:
    """Image files under `folder` at any depth, sorted, and the count of other files.
    Hidden files are left out; a symlink (file or folder) leading outside is an error."""
    found, others = [], 0
    for current, dirnames, filenames in os.walk(folder, followlinks=False):
        current = Path(current)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in dirnames:
            if (current / name).is_symlink() and not _inside(current / name, roots):
                raise _escape_error(str(display / (current / name).relative_to(folder)), "a symlinked folder")
        for name in filenames:
            path = current / name
            if name.startswith("."):
                continue
            if path.is_symlink() and not _inside(path, roots):
                raise _escape_error(str(display / path.relative_to(folder)), "a symlink")
            if is_image_file(path):
                found.append(path)
            else:
                others += 1
    return sorted(found), others


# Folder names of a source that is already split, as datasets ship them (Kaggle's
# valid/, TensorFlow's validation/, Train/ and Test/), in any case.
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}


def split_folders(root: Path, subfolders: list[str]) -> dict[str, str]:
    """{folder name: split} when `root`'s subfolders are a train split and others
    (SPLIT_NAMES), else {} (class folders). Split folders beside class folders, or two
    folders of one split, are a DataError: taken as classes they would train a model
    that tells the splits apart."""
    splits = {name: SPLIT_NAMES[name.lower()] for name in subfolders if name.lower() in SPLIT_NAMES}
    if "train" not in splits.values():
        if len(splits) >= 2 and len(splits) == len(subfolders):
            raise DataError(f"data.source: {root} holds split folders ({', '.join(splits)}) but no train/: "
                            "add train/ with the class folders, or keep one folder per class")
        return {}
    others = [name for name in subfolders if name not in splits]
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise DataError(f"data.source: {root} holds split folders ({', '.join(splits)}) beside other "
                        f"folders ({shown}): keep either one folder per class, or train/ and test/ "
                        "(and val/) each holding the class folders")
    for split in SPLITS:
        named = [name for name, found in splits.items() if found == split]
        if len(named) > 1:
            raise DataError(f"data.source: {root}: {' and '.join(named)} are both the {split} split; "
                            "merge them into one folder")
    return dict(sorted(splits.items(), key=lambda item: SPLITS.index(item[1])))


def scan_folder(source) -> Listing:
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"data.source: {root} is not a folder (data.dataset: folder wants a folder "
                        "with one subfolder per class)")
    roots = _allowed_roots(root)
    subfolders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    splits = split_folders(root, subfolders)
    parts = [(split, root / name) for name, split in splits.items()] if splits else [("", root)]
    listing = Listing()
    ignored = sum(1 for p in root.iterdir() if p.is_file() and not p.name.startswith("."))  # not in a class
    for split, folder in parts:
        class_folders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_folders:
            raise DataError(f"{folder}: no class subfolders; expected {folder}/<class name>/<images>")
        if len(class_folders) == 1 and not split:
            _refuse_a_folder_one_level_too_high(class_folders[0])
        for class_folder in class_folders:
            _refuse_a_class_name_that_does_not_print(class_folder)
            if class_folder.is_symlink() and not _inside(class_folder, roots):
                raise _escape_error(str(class_folder), "a symlinked class folder")
            images, others = _images_under(class_folder, roots, class_folder)
            ignored += others
            if not images:
                raise DataError(f"{class_folder}: empty class folder (no {'/'.join(IMAGE_SUFFIXES)} "
                                "files); add images or remove it")
            for path in images:
                listing.add(path, class_folder.name, split)
    if ignored:
        print(f"{root}: ignored {ignored} files outside the class folders or not images "
              f"({' '.join(IMAGE_SUFFIXES)})")
    return listing


def _refuse_a_class_name_that_does_not_print(class_folder: Path) -> None:
    """A class folder named with a control character or line break: the name would be
    printed raw by predict's table and CSV."""
    _refuse_a_name_not_in_utf8(class_folder)  # bytes that are not UTF-8 are their own mistake
    control = control_character(class_folder.name)
    if control is not None:
        shown = str(class_folder.parent / repr(class_folder.name)[1:-1])
        raise DataError(f"{shown}: the class folder's name holds the control character U+{ord(control):04X}; "
                        "a class name cannot, rename the folder")


def _refuse_a_folder_one_level_too_high(only_class: Path) -> None:
    """One class folder holding only folders: data.source names the folder above the
    class folders (data/wrap rather than data/wrap/photos)."""
    entries = [p for p in only_class.iterdir() if not p.name.startswith(".")]
    if entries and all(p.is_dir() for p in entries):
        shown = ", ".join(sorted(p.name for p in entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise DataError(f"data.source: only one class ('{only_class.name}'), a folder holding only folders "
                        f"({shown}); if those are the classes, set data.source={only_class}")


# ---------------------------------------------------------------------------------------
# CSV layout.

# Characters in one line of a CSV manifest (a path, a label and a split take a few
# hundred). csv's own field limit fires only after the whole line is in memory: a 2 GB
# file without a line break cost 4.2 GB before it did.
MAX_CSV_LINE = 1 << 20


def _bounded_lines(file, manifest: Path):
    """The lines of `file`, each read no further than MAX_CSV_LINE characters: a longer
    one is refused, naming its line."""
    number = 0
    while line := file.readline(MAX_CSV_LINE + 2):  # + 2: room for its \r\n
        number += 1
        if len(line.rstrip("\r\n")) > MAX_CSV_LINE:
            raise DataError(f"{manifest}:{number}: a line longer than {MAX_CSV_LINE:,} characters; "
                            "is data.source the CSV manifest?")
        yield line


def scan_csv(source, columns: dict) -> Listing:
    manifest = Path(source)
    if not manifest.is_file():
        raise DataError(f"data.source: {manifest} is not a file (data.dataset: csv wants a CSV manifest)")
    root = manifest.parent
    roots = _allowed_roots(root)
    path_column, label_column = columns["path_column"], columns["label_column"]
    split_column = columns.get("split_column") or ""
    listing, first_line = Listing(), {}
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(_bounded_lines(file, manifest))
            header = reader.fieldnames or []
            for key, column in (("path_column", path_column), ("label_column", label_column),
                                ("split_column", split_column)):
                if column and column not in header:
                    raise DataError(f"{manifest}:1: no column '{column}' (data.csv.{key}); "
                                    f"the header has: {', '.join(header) or 'nothing'}"
                                    f"{_spaces_around(column, header)}")
            for row in reader:
                line = _first_line(reader, row)
                where = f"{manifest}:{line}"
                extra = row.pop(None, None) or []  # DictReader's fields beyond the header's
                if any((value or "").strip() for value in extra):  # empty ones: a trailing comma
                    raise DataError(f"{where}: {len(header) + len(extra)} fields, but the header has "
                                    f"{len(header)}; quote a value that holds a comma")
                if not any((value or "").strip() for value in row.values()):
                    continue  # a blank line
                text = (row.get(path_column) or "").strip()
                label = (row.get(label_column) or "").strip()
                split = (row.get(split_column) or "").strip().lower() if split_column else ""
                if not text:
                    raise DataError(f"{where}: empty {path_column}")
                for column, value, kind in ((path_column, text, "a file name"), (label_column, label, "a class name")):
                    control = (control_character(value) if kind == "a class name"
                               else next((c for c in value if ord(c) < 32 or ord(c) == 127), None))
                    if control is not None:  # before any message quotes the value: one line each
                        raise DataError(f"{where}: {column} holds the control character "
                                        f"U+{ord(control):04X} ({value!r}); {kind} cannot")
                if not label:
                    raise DataError(f"{where}: empty {label_column} for {text}")
                if split not in ("", *SPLITS):
                    raise DataError(f"{where}: {split_column} {split!r} must be train, val or test")
                relative = Path(text)
                if relative.is_absolute():
                    raise DataError(f"{where}: {text}: absolute path; paths are relative to {root}/")
                path = root / relative
                if not _inside(path, roots):
                    raise _escape_error(f"{where}: {text}", "the path")
                key = os.path.normpath(text)
                if key in first_line:
                    raise DataError(f"{where}: {text}: duplicate path, first listed on line {first_line[key]}")
                first_line[key] = line
                listing.add(path, label, split, place=f"{where}: {text}")
    except UnicodeDecodeError as error:
        raise DataError(f"{manifest}: not UTF-8 text ({error.reason})") from None
    except csv.Error as error:
        raise DataError(f"{manifest}: not a readable CSV ({error})") from None
    if split_column and "" in listing.splits and set(listing.splits) != {""}:
        line = [i for i, s in enumerate(listing.splits) if s == ""][0]
        raise DataError(f"{listing.name(line)}: empty {split_column}; give every row a split or none")
    _name_paths_written_from_elsewhere(listing, root)
    return listing


def _spaces_around(column: str, header: list[str]) -> str:
    """The hint for a header written with ', ' between its names (' label')."""
    spaced = next((name for name in header if name.strip() == column), None)
    if spaced is None:
        return ""
    return (f"; the header's names have spaces around them ({spaced!r}): write the header "
            "with a bare comma between names")


def _name_paths_written_from_elsewhere(listing: Listing, root: Path) -> None:
    """The first missing image, when its path as written names a file once its Windows
    backslashes are slashes, or from the working folder: a manifest written from the
    repository root rather than from its own folder."""
    missing = next((i for i, path in enumerate(listing.paths) if not os.path.lexists(path)), None)
    if missing is None:
        return
    written = Path(listing.paths[missing]).relative_to(root)
    with_slashes = str(written).replace("\\", "/")
    if with_slashes != str(written) and os.path.lexists(root / with_slashes):
        raise DataError(f"{listing.name(missing)}: no such file, but there is {with_slashes}: write the "
                        "CSV's paths with / (a \\ is part of a file name here, not a folder separator)")
    if written.is_file():
        raise DataError(f"{listing.name(missing)}: not in {root}/, but there is such a file from the working "
                        f"folder: paths in the CSV are relative to the CSV's own folder ({root}/)")


def _first_line(reader, row: dict) -> int:
    """The line a CSV record starts on: the reader counts to its end, and a quoted field
    can hold line breaks."""
    values = [item for value in row.values() for item in (value if isinstance(value, list) else [value])]
    return reader.line_num - sum(item.count("\n") for item in values if isinstance(item, str))


# ---------------------------------------------------------------------------------------
# Classes and splits.

def _name_classes_missing_from_a_split(classes, ids, split_indices, strict: bool) -> None:
    """A class missing from a split the other classes are in is named with its counts: a
    warning; an error when `strict` (data.bad_images: fail) and the class has fewer images
    than there are splits, so that no split fraction could give it a place in each."""
    counts = {split: np.bincount(ids[indices], minlength=len(classes))
              for split, indices in split_indices.items()}
    used = [split for split in SPLITS if counts[split].sum() > 0]  # val_split 0: no val at all
    for index, name in enumerate(classes):
        if all(counts[split][index] > 0 for split in used):
            continue
        per_split = ", ".join(f"{split} {int(counts[split][index])}" for split in SPLITS)
        total = sum(int(counts[split][index]) for split in SPLITS)
        message = (f"data.source: class '{name}' has only {total} image{'s' * (total != 1)}, too few "
                   f"to appear in every split ({per_split})")
        if strict and total < len(used):
            raise DataError(message + "; add images (data.bad_images: fail)")
        print(f"warning: {message}", file=sys.stderr)


def class_order(found: set[str], asked: list[str] | None) -> list[str]:
    """The class names in label order: `data.classes` when it is set (it must name every
    class found, and no other), else alphabetical."""
    if not asked:
        return sorted(found)
    repeated = sorted({name for name in asked if asked.count(name) > 1})
    if repeated:
        raise DataError(f"data.classes: '{repeated[0]}' is listed twice")
    unknown = [name for name in asked if name not in found]
    if unknown:
        raise DataError(f"data.classes: '{unknown[0]}' is not a class of data.source "
                        f"(found: {listed_names(sorted(found))})")
    missing = sorted(found - set(asked))
    if missing:
        raise DataError(f"data.classes: leaves out '{missing[0]}', a class of data.source; "
                        "list every class, in the order you want")
    return list(asked)


def assign_splits(listing: Listing, val_split, test_split: float, seed: int,
                  class_names: list[str] | None = None, strict: bool = False):
    """(classes, {split: (indices into the listing, label ids)}).

    The source's own splits are kept; without a test split, a stratified `test_split`
    is held out (seeded); without a val split, a stratified `val_split` of train (a
    fraction, or auto: datasets.val_fraction).
    `class_names` (data.classes) fixes the label order; alphabetical without it."""
    if not listing.paths:
        raise DataError("data.source: no images found (empty dataset)")
    classes = class_order(set(listing.labels), class_names)
    if len(classes) < 2:
        raise DataError(f"data.source: only one class ('{classes[0]}'); a classifier needs at least two")
    ids = _label_ids(listing.labels, classes)
    given = np.array(listing.splits)
    given_splits = set(listing.splits) - {""}
    if given_splits and "train" not in given_splits:
        raise DataError("data.source: the source is split but has no train split")
    train_pool = np.flatnonzero((given == "train") | (given == ""))
    split_indices = {s: np.flatnonzero(given == s) for s in ("val", "test")}
    if "test" not in given_splits:
        if test_split == 0:
            raise DataError("data.test_split: 0, but data.source has no test split; "
                            "set a fraction such as 0.2 or add a test split")
        keep, held = stratified_split(ids[train_pool], test_split, seed, "data.test_split")
        split_indices["test"], train_pool = train_pool[held], train_pool[keep]
    if "val" not in given_splits:
        keep, held = stratified_split(ids[train_pool], val_fraction(val_split, len(train_pool)), seed)
        split_indices["val"], train_pool = train_pool[held], train_pool[keep]
    split_indices["train"] = train_pool
    in_train = set(ids[train_pool].tolist())
    for split in ("val", "test"):
        missing = sorted(set(ids[split_indices[split]].tolist()) - in_train)
        if missing:
            names = ", ".join(f"'{classes[i]}'" for i in missing)
            raise DataError(f"data.source: class {names} has images in {split} but none in train; "
                            "the model cannot learn a class it never sees")
    _name_classes_missing_from_a_split(classes, ids, split_indices, strict)
    return classes, {s: (np.sort(split_indices[s]), ids[np.sort(split_indices[s])]) for s in SPLITS}


def _label_ids(labels, classes):
    lookup = {name: i for i, name in enumerate(classes)}
    return np.array([lookup[label] for label in labels], dtype=np.int64)


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
            raise ImageReadError(f"{errors[0]} (data.bad_images: fail; 'skip' leaves such images out)")
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
                changed: Changed | None = None) -> np.ndarray:
    """Decode the images at `indices` into `path` (.npy, shape (n,) + shape), in order,
    counting what decoding changed into `changed`. Returns the positions (into `indices`)
    of the images written (bad ones skipped)."""
    changed = Changed() if changed is None else changed
    try:
        return _write_split(path, listing, indices, shape, options, executor, bad, histogram, changed)
    except BrokenProcessPool:
        raise DataError(WORKER_DIED) from None
    except OSError as error:
        if atomic.disk_is_full(error, path.parent):
            raise DiskFullError(path) from None
        raise


def _write_split(path, listing, indices, shape, options, executor, bad, histogram, changed):
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
    if not sample and "auto" in (data["image_size"], data["channels"]):
        log(f"none of the sampled images could be read: data.image_size {height}x{width}, data.channels "
            f"{channels} by default (decoding names the files)")
    else:
        log(resize_note(sample, (height, width), data["resize"], data["image_size"] == "auto"))
        stretched = stretch_warning(sample, (height, width), data["resize"])
        if stretched:
            print(stretched, file=sys.stderr)
        enlarged = enlarge_note(sample, (height, width), len(listing.paths), channels)
        if enlarged:
            log(enlarged)
        if data["channels"] == "auto":
            gray = ("every image is grayscale" if len(sample) == len(listing.paths)
                    else f"the {len(sample)} images sampled across the dataset are grayscale")
            log(f"channels: {channels} (data.channels: auto; {gray if channels == 1 else 'colour images'})")
    channels_auto = data["channels"] == "auto"
    data = {**data, "image_size": [height, width], "channels": channels}
    shape = (channels, height, width)
    workers = default_workers() if workers is None else workers
    small = len(listing.paths) < 4 * BATCH_IMAGES
    bad = _BadImages(data["bad_images"])
    histogram = np.zeros((shape[0], 256), dtype=np.int64)
    changed = Changed()
    counts, per_class, files = {}, {}, {}
    with atomic_folder(out_folder) as temporary, decode_pool(workers, small) as executor:
        for split in SPLITS:
            indices, labels = splits[split]
            kept = write_split(temporary / f"{split}_images.npy", listing, indices, shape, data,
                               executor, bad, histogram if split == "train" else None, changed)
            labels = labels[kept]
            atomic.save_numpy(temporary / f"{split}_labels.npy", labels)
            files[split] = [source_relative(listing.paths[i], data) for i in indices[kept]]
            counts[split] = int(len(labels))
            per_class[split] = np.bincount(labels, minlength=len(classes))
        if bad.count:  # before the errors below, which these may explain
            log(f"skipped {bad.count} unreadable images (data.bad_images: skip), first: " + "; ".join(bad.first))
        resized, lost_colour = beyond_the_sample(sample, (height, width), data["resize"], channels_auto,
                                                 changed)
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
    log("images per class: " + ", ".join(f"{listed_names([name])} {int(n)}" for name, n in zip(classes, total)))
    return meta




def source_relative(path: str, data: dict) -> str:
    """How the prepared file list names an image: relative to data.source's folder
    (the folder itself, or the CSV's folder), as the user wrote it in their tree."""
    root = Path(data["source"]) if data["dataset"] == "folder" else Path(data["source"]).parent
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


AUTO_SIDE = 64   # data.image_size: auto scales larger images down to fit this square


def sample_images(paths: list[str], sample: int = SIZE_SAMPLE) -> list[tuple[int, int, str]]:
    """(height, width, mode) of up to `sample` of the images, spread over the list, read
    from the file headers (no decoding). Unreadable files are left out: decoding names them."""
    import warnings

    from PIL import Image

    spread = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), sample)).round().astype(int))
    found = []
    for path in (paths[i] for i in spread):
        if not_a_regular_file(path):  # a FIFO would block the open: decoding names it
            continue
        try:
            with warnings.catch_warnings():
                # Pillow warns of a large image from its header; decoding applies cnnspec's bound
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = open_image(path)
            with image:
                mode = image.mode
                if mode == "P":  # a palette: grayscale only if every entry is
                    mode = "L" if is_gray(image) else "RGB"
                turned = exif_orientation(image) in ROTATING_ORIENTATIONS  # read_image turns it upright
                found.append((image.width, image.height, mode) if turned else (image.height, image.width, mode))
        except Exception:  # a damaged file: the decoding pass reports it under data.bad_images
            continue
    return found


def auto_image_size(sample) -> list[int]:
    """data.image_size: auto: the most common size, scaled down (aspect kept) to fit AUTO_SIDE."""
    if not sample:
        return [32, 32]
    sizes = collections.Counter((height, width) for height, width, _ in sample)
    height, width = sizes.most_common(1)[0][0]
    scale = min(1.0, AUTO_SIDE / max(height, width))
    return [max(1, round(height * scale)), max(1, round(width * scale))]


def auto_channels(sample) -> int:
    """data.channels: auto: 1 when every sampled image is grayscale, else 3."""
    return 1 if sample and all(mode in GRAY_MODES for _, _, mode in sample) else 3


def resize_note(sample, size, policy: str, auto: bool = False) -> str:
    """One line saying whether and how the images are resized: `images 8x8 -> 32x32 (stretch)`."""
    target = f"{size[0]}x{size[1]}"
    why = "data.image_size: auto" if auto else "data.image_size"
    sizes = {(height, width) for height, width, _ in sample}
    if not sizes:
        return f"images resized to {target} ({why}; data.resize: {policy})"
    if sizes == {tuple(size)}:
        return f"images {target} ({why}): not resized"
    by_area = sorted(sizes, key=lambda hw: (hw[0] * hw[1], hw))
    smallest, largest = by_area[0], by_area[-1]
    found = (f"{smallest[0]}x{smallest[1]}" if len(sizes) == 1
             else f"{len(sizes)} sizes, {smallest[0]}x{smallest[1]} to {largest[0]}x{largest[1]} (by area)")
    return f"images {found} -> {target} ({why}; data.resize: {policy})"


ENLARGE_NOTED = 2  # a data.image_size this many times the largest sampled image's side, or more


def enlarge_note(sample, size, images: int, channels: int) -> str | None:
    """One note when data.image_size blows every sampled image up: enlarging adds no
    detail, only pixels to store and compute on."""
    if not sample:
        return None
    height, width = max(((h, w) for h, w, _ in sample), key=lambda hw: hw[0] * hw[1])
    factor = min(size[0] / height, size[1] / width)
    if factor < ENLARGE_NOTED:
        return None
    gigabytes = images * channels * size[0] * size[1] / 1e9
    return (f"note: data.image_size {size[0]}x{size[1]} enlarges even the largest images sampled ({height}x{width}) "
            f"{factor:.0f}x a side: no detail is added, and the prepared images take {gigabytes:.1f} GB; "
            "data.image_size: auto keeps their own size")


def beyond_the_sample(sample, size, policy: str, channels_auto: bool,
                      changed: Changed) -> tuple[str | None, str | None]:
    """The lines that correct what the sampled headers said, once decoding found more: images
    of another size where every sampled one fitted ('not resized'), colour images where every
    sampled one was gray (data.channels: auto chose 1)."""
    resized = lost_colour = None
    if changed.resized and {(height, width) for height, width, _ in sample} == {tuple(size)}:
        resized = (f"decoding found {changed.resized} image{'s' * (changed.resized != 1)} not "
                   f"{size[0]}x{size[1]}, unlike the {len(sample)} sampled: resized to {size[0]}x{size[1]} "
                   f"(data.resize: {policy})")
    if changed.lost_colour and channels_auto:
        lost_colour = (f"warning: decoding found {changed.lost_colour} colour "
                       f"image{'s' * (changed.lost_colour != 1)}, unlike the {len(sample)} sampled: read as "
                       "gray (data.channels: auto chose 1); set data.channels: 3 to keep their colour")
    return resized, lost_colour


# Sampled images whose width/height ratios differ by this factor or more (4:3 landscape and
# 3:4 portrait: 1.78) cannot all be stretched to one shape without visibly squeezing some.
MIXED_ASPECT = 1.5


def stretch_warning(sample, size, policy: str) -> str | None:
    """A warning line when data.resize: stretch would squeeze sampled images of very
    different proportions (portrait and landscape photos) to one shape."""
    if policy != "stretch" or not sample:
        return None
    by_ratio = sorted({(height, width) for height, width, _ in sample}, key=lambda hw: hw[1] / hw[0])
    (tall_h, tall_w), (wide_h, wide_w) = by_ratio[0], by_ratio[-1]
    if (wide_w / wide_h) / (tall_w / tall_h) < MIXED_ASPECT:
        return None
    return (f"warning: the sampled images mix proportions, {tall_h}x{tall_w} to {wide_h}x{wide_w} (height x "
            f"width): data.resize: stretch squeezes every one to {size[0]}x{size[1]}; data.resize: "
            "center_crop keeps their proportions")

