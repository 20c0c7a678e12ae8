"""Stage 2 of 6, preprocess: decode the dataset into a few uint8 arrays in data/prepared/.

    python stages/preprocess.py        (reads params.yaml: data.*, but url and md5)

Built-ins (cifar10, ...): decodes data/raw (what the download stage fetched; data.source
is for folder and csv only) and holds out a stratified `data.val_split` of the training set (seeded by
`data.seed`). folder / csv: reads the user's images from data.source, resizes them to
`data.image_size` and splits them (cnnspec/data/listing.py, user_datasets.py; docs/datasets.md). Either way
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
from cnnspec.errors import end_finished_script, exit_on_user_error, terminate_like_interrupt
from cnnspec.paths import PARAMS, PREPARED, RAW
from cnnspec.pipeline.params import check_user_source, load_stage_params


@exit_on_user_error
def main() -> None:
    terminate_like_interrupt()  # SIGTERM (dvc, kill): temporaries removed, exit 143
    data = load_stage_params(PARAMS, sections=["data"])["data"]
    started = time.perf_counter()
    if data["dataset"] in USER_DATASETS:
        check_user_source(data)
        note = unversioned_source_note(Path(data["source"]))
        if note:
            print(note)
        untracked = untracked_source_warning(Path(data["source"]), data["dataset"])
        if untracked:
            print(untracked, file=sys.stderr)
        meta = prepare_image_dataset(data, PREPARED)
    else:
        # A built-in dataset is always what the download stage left in data/raw: a
        # data.source left over from a folder or csv experiment is not read.
        if Path(data["source"]) != RAW:
            print(f"{data['dataset']}: reading {RAW}/ (the download stage's); "
                  f"data.source ({data['source']}) is used by folder and csv datasets only")
        own_image_settings = [f"data.{key} {value}" for key, value in data.items()
                              if key in ("image_size", "channels") and value != "auto"]
        if own_image_settings:
            print(f"{data['dataset']}: its images keep their own size and channels; "
                  f"{', '.join(own_image_settings)} apply to folder and csv datasets only")
        raw = decode_raw(data["dataset"], RAW)
        arrays, meta = prepare(raw, data["dataset"], data["val_split"], data["seed"])
        write_prepared(PREPARED, arrays, meta)
    print(summary(data["dataset"], meta, time.perf_counter() - started))


def summary(dataset: str, meta: dict, seconds: float) -> str:
    """The stage's last line; counts grouped by thousands, as every other line writes them."""
    counts = ", ".join(f"{split} {n:,}" for split, n in meta["counts"].items())
    return f"{dataset}: {counts} images of shape {meta['input_shape']} -> {PREPARED}/ in {seconds:.1f} s"


def unversioned_source_note(source: Path) -> str | None:
    """One line when data.source lies outside the repository: it is read, but neither
    DVC nor git versions it, so a result cannot be traced back to the images."""
    if not source.is_absolute():
        return None
    try:
        source.resolve().relative_to(Path.cwd().resolve())
        return None
    except ValueError:
        return (f"note: data.source {source} is outside the repository, so no version of it is "
                f"recorded; `dvc add` a copy inside it, or `dvc import` it from its own repository")


def untracked_source_warning(source: Path, dataset: str) -> str | None:
    """One line when the images inside the repository are neither `dvc add`ed (DVC's
    .gitignore entry ignores them) nor committed to git: `dvc exp run` then puts every
    image into the experiment's git commit, and a folder of photos swells .git. None
    outside a git repository, or when git cannot say."""
    import subprocess

    images = source if dataset == "folder" else source.parent
    if source.is_absolute() or not images.is_dir() or images.resolve() == Path.cwd().resolve():
        return None

    def git(*args) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None

    ignored = git("check-ignore", "-q", str(images))
    if ignored is None or ignored.returncode != 1:  # 0: ignored (dvc add); 128: no repository
        return None
    tracked = git("ls-files", "--", str(images))
    if tracked is None or tracked.returncode != 0 or tracked.stdout.strip():
        return None
    return (f"warning: {images} is neither `dvc add`ed nor committed to git: `dvc exp run` puts untracked "
            f"files, every image, into the experiment's git commit; run `dvc add {images}` and commit "
            f"{images}.dvc first (README, Train on your own images)")


if __name__ == "__main__":
    main()
    end_finished_script()
