"""Outputs are written with the user's normal file mode (umask), not the 0600 / 0700
of the temporary files they are renamed from."""
import os
import stat

import numpy as np
import pytest

from cnnspec import atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_take_the_umask_not_0600(tmp_path, umask_022):
    atomic.write_json(tmp_path / "metrics.json", {"accuracy": 1.0})
    atomic.save_numpy(tmp_path / "labels.npy", np.zeros(3))
    atomic.save_torch(tmp_path / "model.pt", {"epoch": 1})
    for name in ("metrics.json", "labels.npy", "model.pt"):
        assert mode(tmp_path / name) == 0o644, name


def test_a_stricter_umask_is_kept(tmp_path):
    old = os.umask(0o077)
    try:
        atomic.write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "private.txt") == 0o600


def test_atomic_folders_take_the_umask_not_0700(tmp_path, umask_022):
    with atomic.atomic_folder(tmp_path / "prepared") as folder:
        atomic.write_text(folder / "meta.json", "{}")
    assert mode(tmp_path / "prepared") == 0o755
    assert mode(tmp_path / "prepared" / "meta.json") == 0o644


def test_downloaded_files_take_the_umask(tmp_path, umask_022):
    from cnnspec.data.download import fetch

    source = tmp_path / "archive.bin"
    source.write_bytes(b"data")
    fetched = fetch(source.as_uri(), tmp_path / "raw" / "archive.bin", md5=None, progress=False)
    assert mode(fetched) == 0o644
