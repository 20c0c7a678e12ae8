"""Stage 2: decode data/raw/ into a few uint8 arrays in data/prepared/.

    python stages/preprocess.py

Holds out a stratified `data.val_split` of the training set (seeded by
`data.seed`) and records the class names and the training split's per-channel
mean and std in meta.json. The folder is written all at once or not at all.
"""
from __future__ import annotations

import time
from pathlib import Path

from cnnspec.datasets import decode_raw, prepare, write_prepared
from cnnspec.errors import exit_on_user_error
from cnnspec.params import check_named_paths, load_params

RAW = Path("data/raw")
PREPARED = Path("data/prepared")


@exit_on_user_error
def main() -> None:
    params = load_params("params.yaml", sections=["data"])
    check_named_paths(params)  # any data.* param that names a file or folder
    data = params["data"]
    started = time.perf_counter()
    raw = decode_raw(data["dataset"], RAW)
    arrays, meta = prepare(raw, data["dataset"], data["val_split"], data["seed"])
    write_prepared(PREPARED, arrays, meta)
    counts = ", ".join(f"{split} {n}" for split, n in meta["counts"].items())
    print(f"{data['dataset']}: {counts} images of shape {meta['input_shape']} -> {PREPARED}/ "
          f"in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
