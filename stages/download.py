"""Stage 1: fetch the dataset named in params.yaml into data/raw/.

    python stages/download.py

Reads `data.dataset`, `data.url` (a mirror) and `data.md5` (its checksums) from
params.yaml. Files already in data/raw/ with the right md5 are not fetched again.
"""
from __future__ import annotations

from pathlib import Path

from cnnspec.download import download_dataset
from cnnspec.errors import exit_on_user_error
from cnnspec.params import check_named_paths, load_params

RAW = Path("data/raw")


@exit_on_user_error
def main() -> None:
    params = load_params("params.yaml", sections=["data"])
    check_named_paths(params)  # any data.* param that names a file or folder
    data = params["data"]
    folder = download_dataset(data["dataset"], RAW, url=data["url"], md5=data["md5"])
    print(f"{data['dataset']}: raw files ready in {folder}")


if __name__ == "__main__":
    main()
