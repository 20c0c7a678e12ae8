"""Files already on disk that are damaged: say which file and what to do, never crash.

- `set_aside(path)`: move a damaged file out of the way (`state.pt` -> `state.pt.damaged`)
  so the next run starts over instead of tripping on it again.
- `load_npy(path, mmap_mode)`: np.load without pickles, where any damage to the header is a
  ValueError (numpy raises five kinds, and warns on an overflowing shape).
- `check_meta(meta, path)`, `check_split(images, labels, split, meta, folder)`: meta.json has
  the documented keys, and the arrays of data/prepared/ agree with it (counts, shapes, dtypes,
  label range) - else one line naming the file and the fix (`load_prepared` calls both);
  `well_formed(key, value)`: check_meta's rule for one key, as a yes or no.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from cnnspec.errors import DataError
from cnnspec.regular_files import not_a_regular_file

DAMAGED_SUFFIX = ".damaged"
REPREPARE_HINT = ("re-run preprocess (dvc repro -f preprocess, or delete data/prepared "
                  "and run python stages/preprocess.py)")


def set_aside(path) -> Path:
    """Rename `path` to `path.damaged` (replacing an older one) and return the new path."""
    path = Path(path)
    aside = path.with_name(path.name + DAMAGED_SUFFIX)
    os.replace(path, aside)
    return aside


# --- prepared data ---------------------------------------------------------

NPY_ERRORS = (OSError, ValueError, EOFError, OverflowError, TypeError)  # np.load on a damaged file


def load_npy(path, mmap_mode: str | None = "r"):
    """The array in the .npy file `path` (memory-mapped by default: a header promising
    terabytes costs nothing until it is checked). A file numpy cannot read, truncated or with
    a header whose shape is negative (OverflowError), not whole numbers (TypeError) or past
    the address space (a RuntimeWarning on stderr, then ValueError), is ValueError saying why;
    so is a path that is not a regular file (a FIFO would block the open)."""
    problem = not_a_regular_file(path)
    if problem:
        raise ValueError(problem if problem == "missing" else f"{problem}, not a regular file")
    try:
        with np.errstate(all="ignore"):
            return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except NPY_ERRORS as error:
        raise ValueError(" ".join(str(error).split()) or type(error).__name__) from None


META_KEYS = {"classes": list, "input_shape": list, "mean": list, "std": list, "counts": dict}


def check_meta(meta, meta_path: Path) -> None:
    """meta.json has the keys and types the prepared format documents."""
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object; {REPREPARE_HINT}")
    for key, kind in META_KEYS.items():
        if not isinstance(meta.get(key), kind):
            raise DataError(f"{meta_path}: '{key}' is missing or not a {kind.__name__}; {REPREPARE_HINT}")
    shape = meta["input_shape"]
    if not well_formed("input_shape", shape):
        raise DataError(f"{meta_path}: input_shape {shape} is not [channels, height, width]; "
                        f"{REPREPARE_HINT}")
    for key in ("mean", "std"):
        if len(meta[key]) != shape[0]:
            raise DataError(f"{meta_path}: {key} has {len(meta[key])} values for {shape[0]} "
                            f"channels; {REPREPARE_HINT}")
        values = meta[key]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise DataError(f"{meta_path}: {key} {values} is not a list of finite numbers; {REPREPARE_HINT}")
        if key == "std" and not all(v > 0 for v in values):
            raise DataError(f"{meta_path}: std {values} must be above 0 (a channel of one value "
                            f"cannot be normalized); {REPREPARE_HINT}")
        if key == "mean" and not all(0 <= v <= 1 for v in values):
            raise DataError(f"{meta_path}: mean {values} is not in 0..1 (pixels / 255); {REPREPARE_HINT}")
    for split, count in meta["counts"].items():
        if not _image_count(count):
            raise DataError(f"{meta_path}: counts.{split} {count!r} is not a number of images; {REPREPARE_HINT}")
    if not meta["classes"]:
        raise DataError(f"{meta_path}: no classes; {REPREPARE_HINT}")
    if not well_formed("classes", meta["classes"]):
        raise DataError(f"{meta_path}: classes is not a list of class names; {REPREPARE_HINT}")


def well_formed(key: str, value) -> bool:
    """Whether meta.json's input_shape, classes or counts holds what preprocess writes there
    (any other key: True). check_meta's rules for them, for readers that take a key of another
    form as absent instead of refusing the file (the resolve stage)."""
    if key == "input_shape":
        return isinstance(value, list) and len(value) == 3 and all(_whole(v) and v > 0 for v in value)
    if key == "classes":
        return isinstance(value, list) and all(isinstance(name, str) and name for name in value)
    if key == "counts":
        return isinstance(value, dict) and all(_image_count(v) for v in value.values())
    return True


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image_count(value) -> bool:
    return _whole(value) and value >= 0


def check_split(images, labels, split: str, meta: dict, folder: Path) -> None:
    """One split's arrays against meta.json, naming the file that disagrees."""
    images_path, labels_path = folder / f"{split}_images.npy", folder / f"{split}_labels.npy"
    meta_path = folder / "meta.json"
    shape = [int(v) for v in meta["input_shape"]]
    if images.dtype != np.uint8 or images.ndim != 4 or list(images.shape[1:]) != shape:
        raise DataError(f"{images_path}: {images.dtype} {list(images.shape)}, but meta.json says uint8 "
                        f"(N, {', '.join(map(str, shape))}); {REPREPARE_HINT}")
    if labels.dtype != np.int64 or labels.ndim != 1:
        raise DataError(f"{labels_path}: {labels.dtype} {list(labels.shape)}, expected int64 (N,); "
                        f"{REPREPARE_HINT}")
    expected = meta["counts"].get(split)
    if expected is not None and len(labels) != expected:
        raise DataError(f"{labels_path}: {len(labels)} labels, but meta.json counts {expected} "
                        f"for {split}; {REPREPARE_HINT}")
    if len(images) != len(labels):
        raise DataError(f"{images_path}: {len(images)} images for {len(labels)} labels in "
                        f"{labels_path.name}; {REPREPARE_HINT}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(meta["classes"])):
        raise DataError(f"{labels_path}: labels from {labels.min()} to {labels.max()}, but "
                        f"{meta_path.name} has {len(meta['classes'])} classes; {REPREPARE_HINT}")
