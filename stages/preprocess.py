"""Stage 2 of 5, preprocess: decode data/raw/ into a few uint8 arrays in data/prepared/.

    python stages/preprocess.py        (reads params.yaml: data.dataset, data.val_split, data.seed)

Holds out a stratified `data.val_split` of the training set (seeded by `data.seed`)
and records the class names and the training split's per-channel mean and std in
meta.json. The folder is written all at once or not at all.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python stages/<name>.py`: import this checkout's cnnspec
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnspec.datasets import decode_raw, prepare, write_prepared
from cnnspec.errors import exit_on_user_error
from cnnspec.params import check_named_paths, load_params
from cnnspec.pipeline import PARAMS, PREPARED, RAW


@exit_on_user_error
def main() -> None:
    params = load_params(PARAMS, sections=["data"])
    check_named_paths(params, PARAMS)  # any data.* param that names a file or folder
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
