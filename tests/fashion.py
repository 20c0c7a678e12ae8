"""A prepared subset of Debian's Fashion-MNIST (/usr/share/datasets/fashion-mnist/, the
dataset-fashion-mnist package) for tests that must learn from real images quickly."""
from __future__ import annotations

from pathlib import Path

from cnnspec.data.datasets import get_dataset, prepare, write_prepared

FASHION = Path("/usr/share/datasets/fashion-mnist")
_DECODED = {}

# A small CNN that learns Fashion-MNIST quickly: about 89% after one CPU epoch.
SPEC = """\
name: fashion_small
description: two conv blocks with batch norm; about 89% after one epoch on Fashion-MNIST
layers:
  - conv: {filters: 32, kernel: 3, bias: false}
  - bn
  - activation: relu
  - max_pool: 2
  - conv: {filters: 64, kernel: 3, bias: false}
  - bn
  - activation: relu
  - max_pool: 2
  - flatten
  - dense: {units: 128, activation: relu}
  - dropout: 0.2
  - dense: {units: num_classes}
"""


def write_subset(folder, n_train: int, n_val: int = 500, n_test: int = 2000) -> Path:
    """data/prepared-style folder: the first n of each split after preprocess's own
    stratified split (val_split 0.02, seed 0) of the 60,000 training images."""
    if "arrays" not in _DECODED:
        raw = get_dataset("fashion-mnist").decode(FASHION)
        _DECODED["arrays"], _DECODED["meta"] = prepare(raw, "fashion-mnist", 0.02, 0)
    arrays, meta = _DECODED["arrays"], _DECODED["meta"]
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    subset = {name: array[:sizes[name.split("_")[0]]] for name, array in arrays.items()}
    counts = {split: len(subset[f"{split}_labels"]) for split in sizes}
    write_prepared(Path(folder), subset, {**meta, "counts": counts})
    return Path(folder)
