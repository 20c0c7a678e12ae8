"""Files already on disk that are damaged: an archive that matches its md5 but does not
extract, a truncated or empty resume state, a truncated model.pt, prepared arrays that
are truncated or disagree with meta.json. Each gives one line naming the file and what
to do; a damaged resume state or archive is moved out of the way so the next run works."""
import io
import json
import os
import tarfile
import warnings

import numpy as np
import pytest

from cnnspec.data.datasets import load_prepared
from cnnspec.data.download import download_dataset
from cnnspec.errors import DataError, TrainingError
from cnnspec.models.checkpoint import RETRAIN_HINT, load_network, read_checkpoint
from stages import evaluate as evaluate_stage
from tests.fakedata import make_cifar10_archive, md5_of, write_fake_prepared
from tests.tinytraining import run_training, save_tiny_checkpoint, tiny_model, train_params, write_stage_inputs

REPREPARE = "dvc repro -f preprocess"


def truncate(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


# --- an archive that matches its md5 but cannot be used --------------------------------

def test_archive_that_matches_its_md5_but_does_not_extract_is_removed_then_fetched_again(tmp_path):
    mirror, raw = tmp_path / "mirror", tmp_path / "raw"
    good = make_cifar10_archive(mirror / "good" / "cifar-10-python.tar.gz", 2, 1)
    torn = mirror / "torn" / "cifar-10-python.tar.gz"
    torn.parent.mkdir(parents=True)
    torn.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])  # published with its own md5

    with pytest.raises(DataError) as caught:
        download_dataset("cifar10", raw, url=torn.as_uri(), md5=md5_of(torn), log=lambda line: None)
    message = str(caught.value)
    assert "\n" not in message and "not a readable tar archive" in message
    assert f"removed {raw / 'cifar-10-python.tar.gz'} so the next run downloads it again" in message
    assert not (raw / "cifar-10-python.tar.gz").exists()
    assert not (raw / "extracted").exists() and not list(raw.glob(".*"))

    lines = []  # the mirror is fixed: the next run fetches the archive instead of skipping it
    folder = download_dataset("cifar10", raw, url=good.as_uri(), md5=md5_of(good), log=lines.append)
    assert any(line.startswith("downloading") for line in lines)
    assert (folder / "test_batch").is_file()


def test_archive_without_the_dataset_folder_is_removed_with_what_came_out_of_it(tmp_path):
    wrong = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    wrong.parent.mkdir()
    with tarfile.open(wrong, "w:gz") as archive:
        info = tarfile.TarInfo("something-else/readme.txt")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"hello"))
    raw = tmp_path / "raw"
    with pytest.raises(DataError, match="has no folder 'cifar-10-batches-py/'.*; removed .* downloads it again"):
        download_dataset("cifar10", raw, url=wrong.as_uri(), md5=md5_of(wrong), log=lambda line: None)
    assert not (raw / "cifar-10-python.tar.gz").exists() and not (raw / "extracted").exists()


# --- the resume state ------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "zero-byte"])
def test_a_damaged_resume_state_is_set_aside_and_training_starts_over(damage, tmp_path, capsys):
    run_training(train_params(epochs=1), tmp_path)  # leaves resume/state.pt after epoch 1
    state = tmp_path / "resume" / "state.pt"
    if damage == "truncated":
        truncate(state, 0.5)
    else:
        state.write_bytes(b"")
    damaged_bytes = state.read_bytes()
    capsys.readouterr()

    result = run_training(train_params(epochs=2), tmp_path)

    notes = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert notes == [f"note: resume state {state} is damaged ({notes[0].split('(')[1].split(')')[0]}); "
                     f"moved it to {state}.damaged and training starts over from epoch 1"]
    assert (tmp_path / "resume" / "state.pt.damaged").read_bytes() == damaged_bytes
    assert result.resumed_from_epoch == 0 and len(result.history) == 2
    fresh = run_training(train_params(epochs=2), model=tiny_model())  # no resume at all
    assert result.history == fresh.history


# --- a damaged model.pt ----------------------------------------------------------------

@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("evaluate: {batch_size: 10, tta: none}\n")
    meta = write_fake_prepared(tmp_path / "data" / "prepared", n_test=24)
    save_tiny_checkpoint(tmp_path / "models" / "model.pt", meta)
    return tmp_path


@pytest.mark.parametrize("keep", [0.0, 0.001, 0.5, 0.99])
def test_a_truncated_model_given_to_evaluate_names_the_file_and_says_to_train_again(keep, project, capsys):
    truncate(project / "models" / "model.pt", keep)
    with pytest.raises(SystemExit) as exit_info:
        evaluate_stage.main()
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: models/model.pt: the checkpoint is ")
    assert ("damaged or truncated" in error or "empty file" in error) and RETRAIN_HINT in error
    assert not (project / "metrics").exists()


def test_read_checkpoint_tells_a_damaged_file_from_a_foreign_one(tmp_path):
    """predict and export read checkpoints through read_checkpoint too: the same words."""
    path = tmp_path / "model.pt"
    save_tiny_checkpoint(path, {"classes": ["a", "b"], "mean": [0.5] * 3, "std": [0.2] * 3,
                                "input_shape": [3, 8, 8]})
    assert read_checkpoint(path)["classes"] == ["a", "b"]
    truncate(path, 0.7)
    with pytest.raises(TrainingError, match="damaged or truncated"):
        load_network(path)
    path.write_bytes(b"plain text, not made by torch.save")
    with pytest.raises(TrainingError, match="not a loadable cnnspec checkpoint"):
        read_checkpoint(path)


# --- prepared data ---------------------------------------------------------------------

def _prepared(folder):
    return write_fake_prepared(folder, n_train=6, n_val=2, n_test=3, shape=(3, 4, 4), classes=["a", "b"],
                               learnable=False)


def _edit_meta(folder, **changes):
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, **changes}))


def _npy_header(path, shape, descr="<i8"):
    """A .npy file whose header claims `shape` (numpy's own writer refuses the odd ones)."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode().ljust(117) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 64)


DAMAGES = {
    # name: (how to damage the folder, the file the message must name, words in it)
    "truncated images": (lambda f: truncate(f / "train_images.npy", 0.6), "train_images.npy", "truncated"),
    "zero-byte labels": (lambda f: (f / "val_labels.npy").write_bytes(b""), "val_labels.npy", "truncated"),
    "garbage array": (lambda f: (f / "test_images.npy").write_bytes(b"\x93NUMPY garbage"),
                      "test_images.npy", "damaged"),
    "meta.json not json": (lambda f: truncate(f / "meta.json", 0.5), "meta.json", "damaged"),
    "count mismatch": (lambda f: _edit_meta(f, counts={"train": 6, "val": 2, "test": 4}),
                       "test_labels.npy", "meta.json counts 4"),
    "shape mismatch": (lambda f: _edit_meta(f, input_shape=[3, 8, 8]), "train_images.npy",
                       "meta.json says uint8 (N, 3, 8, 8)"),
    "dtype mismatch": (lambda f: np.save(f / "train_labels.npy", np.zeros(6, np.int32)),
                       "train_labels.npy", "int32"),
    "label out of range": (lambda f: _edit_meta(f, classes=["a"]), "train_labels.npy", "1 classes"),
    "std per channel": (lambda f: _edit_meta(f, std=[0.2]), "meta.json", "1 values for 3 channels"),
    "missing key": (lambda f: _edit_meta(f, classes=None), "meta.json", "'classes' is missing"),
    # headers numpy reads into OverflowError and TypeError, and one past the address space,
    # where numpy also warned on stderr; each was a traceback, or a second line
    "negative shape": (lambda f: _npy_header(f / "val_labels.npy", (-100,)), "val_labels.npy", "damaged"),
    "shape of true": (lambda f: _npy_header(f / "val_labels.npy", (True,)), "val_labels.npy", "damaged"),
    "overflowing shape": (lambda f: _npy_header(f / "test_images.npy", (2**31, 2**31, 2**31, 4), "|u1"),
                          "test_images.npy", "damaged"),
    "count not a number": (lambda f: _edit_meta(f, counts={"train": 6, "val": "2", "test": 3}), "meta.json",
                           "counts.val '2' is not a number of images"),
    "channels true": (lambda f: _edit_meta(f, input_shape=[True, 4, 4], mean=[0.5], std=[0.2]), "meta.json",
                      "input_shape [True, 4, 4] is not [channels, height, width]"),
    # in place of an array, what someone's copy may hold: not "missing", which says preprocess never ran
    "labels a fifo": (lambda f: _replace(f / "val_labels.npy", os.mkfifo), "val_labels.npy",
                      "a named pipe (FIFO), not a regular file"),
    "images a folder": (lambda f: _replace(f / "test_images.npy", os.mkdir), "test_images.npy",
                        "a folder, not a regular file"),
}


def _replace(path, make):
    path.unlink()
    make(path)


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_prepared_data_names_the_file_and_says_to_preprocess_again(damage, tmp_path):
    folder = tmp_path / "prepared"
    _prepared(folder)
    load_prepared(folder)  # whole, it loads
    spoil, file, words = DAMAGES[damage]
    spoil(folder)
    for mmap_mode in (None, "r"):  # train reads the arrays, evaluate and plot map them
        with pytest.raises(DataError) as caught, warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing printed beside the one line
            load_prepared(folder, mmap_mode=mmap_mode)
        message = str(caught.value)
        assert message.startswith(f"{folder / file}: ") and "\n" not in message
        assert words in message and REPREPARE in message


def test_train_stage_on_damaged_prepared_data_is_one_line(tmp_path, monkeypatch, capsys):
    from stages import train as train_stage

    write_stage_inputs(tmp_path)
    truncate(tmp_path / "data" / "prepared" / "train_images.npy", 0.5)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train_stage.main([])  # not pytest's own arguments
    error = capsys.readouterr().err
    assert exit_info.value.code == 1 and error.count("\n") == 1
    assert error.startswith("error: data/prepared/train_images.npy: damaged or truncated") and REPREPARE in error
    assert not (tmp_path / "models" / "model.pt").exists()
