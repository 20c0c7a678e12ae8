"""A full disk while writing a checkpoint, the resume state or the prepared arrays:
the previous file stays intact, no temporary file is left, and the stage stops with
one line naming the file. Simulated by making the write raise ENOSPC, and for real on
a 1 MiB tmpfs when this machine lets the tests mount one (root); skipped otherwise."""
import errno
import subprocess

import numpy as np
import pytest
import torch

from cnnspec import atomic
from cnnspec.data.datasets import load_prepared, write_prepared
from cnnspec.errors import DiskFullError
from cnnspec.models.checkpoint import read_checkpoint
from tests.tinytraining import write_stage_inputs

FULL = "no space left on device while writing it"


def leftovers(folder):
    """Temporary files and folders the atomic writers would leave on failure."""
    return sorted(p.name for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old")))


def fail_after(calls: int, real):
    """`real` for the first `calls` calls, then a write that fills the disk half-way."""
    count = {"n": 0}

    def write(*args, **kwargs):  # torch.save(obj, file) or numpy.save(file, array)
        count["n"] += 1
        if count["n"] > calls:
            next(a for a in args if hasattr(a, "write")).write(b"\0" * 1000)  # a part made it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    return write


def small_prepared(n=6, size=4):
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.int64)
    meta = {"dataset": "fake", "classes": ["a", "b"], "input_shape": [3, size, size],
            "mean": [0.5] * 3, "std": [0.2] * 3, "counts": {"train": n, "val": n, "test": n}}
    return arrays, meta


# --- simulated: the write raises ENOSPC ------------------------------------------------

def test_a_full_disk_while_saving_a_torch_file_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    atomic.save_torch(path, {"epoch": 1})
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", fail_after(0, torch.save))
    with pytest.raises(DiskFullError) as caught:
        atomic.save_torch(path, {"epoch": 2})
    assert str(caught.value) == (f"{path}: {FULL} (the previous version, if any, is unchanged); "
                                 "free some disk space and run again")
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_a_write_error_without_errno_on_a_nearly_full_disk_is_a_full_disk(tmp_path, monkeypatch):
    """numpy reports a short write as OSError("N requested and M written"), no errno."""
    def short_write(out, array, **kwargs):
        raise OSError(f"{array.size} requested and {array.size // 2} written")

    monkeypatch.setattr(np, "save", short_write)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda folder: type("U", (), {"free": 4096})())
    with pytest.raises(DiskFullError, match="images.npy: no space left"):
        atomic.save_numpy(tmp_path / "images.npy", np.zeros(10))
    # with room to spare the same error is not blamed on the disk
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda folder: type("U", (), {"free": 1 << 30})())
    with pytest.raises(OSError, match="requested") as caught:
        atomic.save_numpy(tmp_path / "images.npy", np.zeros(10))
    assert not isinstance(caught.value, DiskFullError)
    assert leftovers(tmp_path) == []


def test_a_full_disk_while_writing_the_prepared_arrays_keeps_the_old_folder(tmp_path, monkeypatch):
    folder = tmp_path / "prepared"
    arrays, meta = small_prepared()
    write_prepared(folder, arrays, meta)
    new_arrays, new_meta = small_prepared(n=8)
    monkeypatch.setattr(np, "save", fail_after(2, np.save))  # the third array fills the disk
    with pytest.raises(DiskFullError) as caught:
        write_prepared(folder, new_arrays, new_meta)
    assert str(caught.value).startswith(f"{folder / 'val_images.npy'}: {FULL}")
    monkeypatch.undo()
    assert load_prepared(folder)["meta"] == meta and leftovers(tmp_path) == []


def test_a_full_disk_while_saving_the_resume_state_stops_in_one_line_and_keeps_the_last(
        tmp_path, monkeypatch, capsys):
    from stages import train as train_stage

    write_stage_inputs(tmp_path)  # 2 epochs: resume state, resume state, model.pt
    monkeypatch.chdir(tmp_path)
    real_save = torch.save
    monkeypatch.setattr(torch, "save", fail_after(1, torch.save))
    with pytest.raises(SystemExit) as exit_info:
        train_stage.main([])  # not pytest's own arguments
    error = capsys.readouterr().err
    assert exit_info.value.code == 1 and error.count("\n") == 1
    assert error.startswith(f"error: models/resume/state.pt: {FULL}")
    state = torch.load(tmp_path / "models" / "resume" / "state.pt", weights_only=True)
    assert state["next_epoch"] == 1  # the state written after epoch 1, whole
    assert not (tmp_path / "models" / "model.pt").exists() and leftovers(tmp_path) == []

    monkeypatch.setattr(torch, "save", real_save)  # space again: the rerun resumes
    result = train_stage.run()
    assert result.resumed_from_epoch == 1 and (tmp_path / "models" / "model.pt").is_file()


def test_a_full_disk_while_saving_the_checkpoint_keeps_the_previous_model(tmp_path, monkeypatch, capsys):
    from stages import train as train_stage

    write_stage_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    train_stage.run()
    model = tmp_path / "models" / "model.pt"
    before = model.read_bytes()
    (tmp_path / "params.yaml").write_text((tmp_path / "params.yaml").read_text()
                                          .replace("epochs: 2", "epochs: 1"))
    monkeypatch.setattr(torch, "save", fail_after(1, torch.save))  # resume state ok, model.pt not
    with pytest.raises(SystemExit):
        train_stage.main([])  # not pytest's own arguments
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: models/model.pt: {FULL}")
    assert model.read_bytes() == before and read_checkpoint(model)["epoch"] == 1
    assert leftovers(tmp_path) == []


# --- for real: a 1 MiB tmpfs -----------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs mounted at tmp_path/disk (needs root); the test is skipped otherwise."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_real_full_disk_keeps_the_previous_checkpoint(tiny_disk):
    path = tiny_disk / "model.pt"
    atomic.save_torch(path, {"weights": torch.ones(1000)})
    before = path.read_bytes()
    with pytest.raises(DiskFullError, match=f"model.pt: {FULL}"):
        atomic.save_torch(path, {"weights": torch.ones(1_000_000)})  # 4 MB on a 1 MiB disk
    assert path.read_bytes() == before and leftovers(tiny_disk) == []
    atomic.save_torch(path, {"weights": torch.zeros(1000)})  # the space came back
    assert torch.load(path, weights_only=True)["weights"].sum() == 0


def test_real_full_disk_keeps_the_previous_prepared_folder(tiny_disk):
    folder = tiny_disk / "prepared"
    arrays, meta = small_prepared()
    write_prepared(folder, arrays, meta)
    big_arrays, big_meta = small_prepared(n=400, size=32)  # 1.2 MB of train images
    with pytest.raises(DiskFullError) as caught:
        write_prepared(folder, big_arrays, big_meta)
    assert str(caught.value).startswith(f"{folder / 'train_images.npy'}: {FULL}")
    assert load_prepared(folder)["meta"] == meta and leftovers(tiny_disk) == []
