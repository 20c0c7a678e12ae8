"""Stage 1 of 6, download: fetch the dataset named in params.yaml into data/raw/.

    python stages/download.py        (reads params.yaml: data.dataset, data.url, data.md5, data.source)

`data.url` is a mirror and `data.md5` its checksums. Files already in data/raw/ with
the right md5 are not fetched again; an archive is extracted all at once or not at all.
folder and csv datasets are the user's own files (data.source, tracked with `dvc add`):
nothing is fetched, data/raw/ only holds a note saying so.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python stages/<name>.py`: import this checkout's cnnspec
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnspec import atomic
from cnnspec.data.datasets import USER_DATASETS
from cnnspec.data.download import download_dataset
from cnnspec.errors import end_finished_script, exit_on_user_error, terminate_like_interrupt
from cnnspec.paths import PARAMS, RAW
from cnnspec.pipeline.params import check_user_source, load_stage_params


@exit_on_user_error
def main() -> None:
    terminate_like_interrupt()  # SIGTERM (dvc, kill): temporaries removed, exit 143
    data = load_stage_params(PARAMS, sections=["data"])["data"]
    if data["dataset"] in USER_DATASETS:
        check_user_source(data)
        RAW.mkdir(parents=True, exist_ok=True)
        atomic.write_text(RAW / "README.txt", f"data.dataset is {data['dataset']}: preprocess reads "
                          "the images from data.source; nothing is downloaded.\n")
        print(f"{data['dataset']}: nothing to download (preprocess reads data.source)")
        return
    folder = download_dataset(data["dataset"], RAW, url=data["url"], md5=data["md5"])
    print(f"{data['dataset']}: raw files ready in {folder}")


if __name__ == "__main__":
    main()
    end_finished_script()
