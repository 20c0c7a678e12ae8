"""Stage 2 of 6, preprocess: decode the dataset into a few uint8 arrays in data/prepared/.

    python stages/preprocess.py        (reads params.yaml: data.*, but url and md5)

Built-ins (cifar10, ...): decodes data.source (data/raw, what the download stage
fetched) and holds out a stratified `data.val_split` of the training set (seeded by
`data.seed`). folder / csv: reads the user's images from data.source, resizes them to
`data.image_size` and splits them (cnnspec/data/user_datasets.py, docs/datasets.md). Either way
meta.json records the class names and the training split's per-channel mean and std,
and the folder is written all at once or not at all.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python stages/<name>.py`: import this checkout's cnnspec
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnspec.data.datasets import USER_DATASETS, decode_raw, prepare, write_prepared
from cnnspec.data.user_datasets import prepare_image_dataset
from cnnspec.errors import ParamsError, exit_on_user_error, terminate_like_interrupt
from cnnspec.paths import PARAMS, PREPARED
from cnnspec.pipeline.params import load_stage_params, path_problem


@exit_on_user_error
def main() -> None:
    terminate_like_interrupt()  # SIGTERM (dvc, kill): temporaries removed, exit 143
    data = load_stage_params(PARAMS, sections=["data"])["data"]
    started = time.perf_counter()
    if data["dataset"] in USER_DATASETS:
        kind = "folder" if data["dataset"] == "folder" else "file"  # csv: the manifest
        problem = path_problem(Path(data["source"]), kind)
        if problem:
            raise ParamsError(f"{PARAMS}: data.source: {data['source']}: {problem}")
        meta = prepare_image_dataset(data, PREPARED)
    else:
        raw = decode_raw(data["dataset"], Path(data["source"]))
        arrays, meta = prepare(raw, data["dataset"], data["val_split"], data["seed"])
        write_prepared(PREPARED, arrays, meta)
    counts = ", ".join(f"{split} {n}" for split, n in meta["counts"].items())
    print(f"{data['dataset']}: {counts} images of shape {meta['input_shape']} -> {PREPARED}/ "
          f"in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
