"""The preprocess step: stratified split, training statistics, all-or-nothing output,
and the stage run as a command on generated raw data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cnnspec import atomic
from cnnspec.data import datasets
from cnnspec.data.datasets import RawDataset, channel_mean_std, load_prepared, prepare, stratified_split, write_prepared
from cnnspec.data.download import download_dataset
from cnnspec.errors import DataError
from tests.fakedata import make_cifar10_archive, make_mnist_folder, md5_of

REPO = Path(__file__).resolve().parent.parent


def unbalanced_labels(seed=0):
    counts = [50, 31, 7, 120, 2]
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(labels), counts


def small_raw(seed=0, n=200, channels=3):
    rng = np.random.default_rng(seed)
    labels, _ = unbalanced_labels(seed)
    images = rng.integers(0, 256, (len(labels), channels, 8, 8), dtype=np.uint8)
    test = rng.integers(0, 256, (n // 4, channels, 8, 8), dtype=np.uint8)
    return RawDataset(images, labels, test, rng.integers(0, 5, n // 4), list("abcde"))


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5])
def test_split_is_stratified_and_complete(fraction):
    labels, counts = unbalanced_labels()
    train, val = stratified_split(labels, fraction, seed=0)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    val_counts = np.bincount(labels[val], minlength=len(counts))
    for count, held_out in zip(counts, val_counts):
        assert abs(held_out - fraction * count) <= 1, (count, held_out)
        assert held_out < count  # every class keeps a training image
    assert abs(len(val) - fraction * len(labels)) <= len(counts)


def test_split_is_deterministic_under_the_seed():
    labels, _ = unbalanced_labels()
    first = stratified_split(labels, 0.2, seed=7)
    again = stratified_split(labels, 0.2, seed=7)
    other = stratified_split(labels, 0.2, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])
    assert len(first[1]) == len(other[1])


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_fraction_out_of_range_is_a_data_error(fraction):
    with pytest.raises(DataError, match="data.val_split"):
        stratified_split(np.arange(10) % 2, fraction, seed=0)


def test_mean_std_match_numpy_on_the_training_split():
    raw = small_raw()
    arrays, meta = prepare(raw, "cifar10", 0.2, seed=3)
    pixels = arrays["train_images"].astype(np.float64) / 255
    np.testing.assert_allclose(meta["mean"], pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(meta["std"], pixels.std(axis=(0, 2, 3)), rtol=1e-12)
    # Small chunks give the same answer as one big one.
    chunked = channel_mean_std(arrays["train_images"], chunk=7)
    np.testing.assert_allclose(chunked, (meta["mean"], meta["std"]), rtol=1e-12)


def test_prepare_writes_the_documented_format():
    raw = small_raw()
    arrays, meta = prepare(raw, "cifar10", 0.1, seed=0)
    assert set(arrays) == {f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")}
    for split in ("train", "val", "test"):
        assert arrays[f"{split}_images"].dtype == np.uint8 and arrays[f"{split}_images"].ndim == 4
        assert arrays[f"{split}_labels"].dtype == np.int64
        assert meta["counts"][split] == len(arrays[f"{split}_labels"]) == len(arrays[f"{split}_images"])
    assert meta["counts"]["train"] + meta["counts"]["val"] == len(raw.train_labels)
    assert meta["input_shape"] == [3, 8, 8] and meta["classes"] == list("abcde")
    # Each image keeps its label through the split.
    train, val = stratified_split(raw.train_labels, 0.1, seed=0)
    np.testing.assert_array_equal(arrays["val_images"], raw.train_images[val])
    np.testing.assert_array_equal(arrays["val_labels"], raw.train_labels[val])


def test_val_split_zero_gives_empty_validation_arrays(tmp_path):
    arrays, meta = prepare(small_raw(), "cifar10", 0.0, seed=0)
    assert meta["counts"]["val"] == 0
    write_prepared(tmp_path / "prepared", arrays, meta)
    loaded = load_prepared(tmp_path / "prepared")
    assert loaded["val_images"].shape == (0, 3, 8, 8) and loaded["val_labels"].shape == (0,)


def test_a_failure_mid_write_leaves_the_old_folder_intact(tmp_path, monkeypatch):
    old_arrays, old_meta = prepare(small_raw(seed=1), "cifar10", 0.1, seed=0)
    write_prepared(tmp_path / "prepared", old_arrays, old_meta)
    new_arrays, new_meta = prepare(small_raw(seed=2), "cifar10", 0.3, seed=0)
    calls = []
    real_save = atomic.save_numpy

    def failing_save(path, array):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real_save(path, array)

    monkeypatch.setattr(datasets.atomic, "save_numpy", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_prepared(tmp_path / "prepared", new_arrays, new_meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no temporary folder left
    loaded = load_prepared(tmp_path / "prepared")
    assert loaded["meta"] == old_meta
    np.testing.assert_array_equal(loaded["train_images"], old_arrays["train_images"])


def test_a_failure_on_the_first_write_leaves_no_folder(tmp_path, monkeypatch):
    arrays, meta = prepare(small_raw(), "cifar10", 0.1, seed=0)
    monkeypatch.setattr(datasets.atomic, "write_json", lambda *a: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        write_prepared(tmp_path / "prepared", arrays, meta)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# The stage as a command.

def run_stage(folder: Path, name: str, **data):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(data)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CNNSPEC_DEBUG", None)
    return subprocess.run([sys.executable, str(REPO / "stages" / f"{name}.py")], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)


def test_preprocess_stage_on_generated_cifar10(tmp_path):
    archive = make_cifar10_archive(tmp_path / "mirror" / "cifar-10-python.tar.gz", 20, 4, seed=1)
    download_dataset("cifar10", tmp_path / "data" / "raw", url=archive.as_uri(), md5=md5_of(archive),
                     log=lambda line: None)
    result = run_stage(tmp_path, "preprocess", val_split=0.2, seed=4)
    assert result.returncode == 0, result.stderr
    prepared = load_prepared(tmp_path / "data" / "prepared")
    assert prepared["meta"]["counts"] == {"train": 160, "val": 40, "test": 40}
    assert np.bincount(prepared["val_labels"]).tolist() == [4] * 10
    assert prepared["meta"]["classes"][3] == "cat"
    first = {name: (tmp_path / "data" / "prepared" / name).read_bytes()
             for name in sorted(os.listdir(tmp_path / "data" / "prepared"))}
    assert run_stage(tmp_path, "preprocess", val_split=0.2, seed=4).returncode == 0
    again = {name: (tmp_path / "data" / "prepared" / name).read_bytes()
             for name in sorted(os.listdir(tmp_path / "data" / "prepared"))}
    assert first == again  # same params and seed: byte-identical outputs


def test_preprocess_stage_on_mnist_folder(tmp_path):
    make_mnist_folder(tmp_path / "data" / "raw", 5, 2)
    result = run_stage(tmp_path, "preprocess", dataset="mnist", val_split=0.2)
    assert result.returncode == 0, result.stderr
    meta = load_prepared(tmp_path / "data" / "prepared")["meta"]
    assert meta["input_shape"] == [1, 28, 28] and meta["counts"] == {"train": 40, "val": 10, "test": 20}


def test_the_stage_line_groups_counts_by_thousands_as_the_line_before_it_does():
    from stages.preprocess import summary

    meta = {"counts": {"train": 58800, "val": 1200, "test": 10000}, "input_shape": [1, 28, 28]}
    assert summary("fashion-mnist", meta, 0.64) == \
        "fashion-mnist: train 58,800, val 1,200, test 10,000 images of shape [1, 28, 28] -> data/prepared/ in 0.6 s"


def test_preprocess_stage_without_raw_data_says_what_to_run(tmp_path):
    result = run_stage(tmp_path, "preprocess")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "run the download stage" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "prepared").exists()


def test_the_images_per_class_line_groups_counts_by_thousands(tmp_path):
    """As every other line of the stage writes counts: 'many 1,000', not 'many 1000'."""
    from PIL import Image

    from cnnspec.data.user_datasets import prepare_image_dataset
    from cnnspec.pipeline.params import load_params

    for name, count in (("many", 1000), ("few", 10)):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (4, 4), i % 256).save(tmp_path / "images" / name / f"{i}.png")
    data = load_params(REPO / "params.yaml", ["data"])["data"]
    data.update(dataset="folder", source=str(tmp_path / "images"), image_size=[4, 4], channels=1,
                val_split=0.1, test_split=0.2)
    lines = []
    prepare_image_dataset(data, tmp_path / "prepared", workers=1, log=lines.append)
    assert lines[-1] == "images per class: few 10, many 1,000"
