"""Small datasets in the real on-disk formats, and a local web server, for tests.

    from tests.fakedata import make_cifar10_archive, serve_folder
    archive = make_cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    with serve_folder(tmp_path) as base_url:   # "http://127.0.0.1:PORT", no trailing slash
        url = f"{base_url}/cifar-10-python.tar.gz"

With `learnable=True` every class has its own colour and stripe pattern under
noise, so even a tiny CNN beats chance after one epoch; `learnable=False` gives
pure noise. The same arguments give the same bytes.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def md5_of(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------
# Images.

def class_images(n_per_class: int, n_classes: int, channels: int, size: int,
                 rng: np.random.Generator, learnable: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, size, size) images and int64 labels, classes in shuffled order."""
    labels = np.repeat(np.arange(n_classes), n_per_class)
    rng.shuffle(labels)
    noise = rng.normal(0, 30, size=(len(labels), channels, size, size))
    if not learnable:
        return np.clip(128 + 2 * noise, 0, 255).astype(np.uint8), labels.astype(np.int64)
    colours = np.random.default_rng(1234).uniform(40, 215, size=(n_classes, channels))
    rows = np.arange(size)
    stripes = np.stack([np.sin(rows * (1 + k % 5) * np.pi / size + k) for k in range(n_classes)])
    images = colours[labels][:, :, None, None] + 40 * stripes[labels][:, None, :, None] + noise
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


# ---------------------------------------------------------------------------------------
# Prepared data: what the preprocess stage writes to data/prepared/.

def prepared_data(n_train: int = 48, n_val: int = 24, n_test: int = 0, shape=(3, 8, 8),
                  classes=("cat", "dog", "ship"), seed: int = 0, learnable: bool = True) -> dict:
    """load_prepared's dict: uint8 images, int64 labels cycling through the classes (every
    class present), and "meta". `learnable=True` gives each class its own brightness band
    under noise, so a tiny model learns it in a few steps; False gives uniform noise."""
    rng = np.random.default_rng(seed)
    band = 240 // len(classes)

    def split(n):
        labels = np.arange(n) % len(classes)
        if learnable:
            images = rng.integers(0, band, (n, *shape)) + labels.reshape(-1, *[1] * len(shape)) * band
        else:
            images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        return images.astype(np.uint8), labels.astype(np.int64)

    data = {}
    for name, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        data[f"{name}_images"], data[f"{name}_labels"] = split(n)
    data["meta"] = {"dataset": "fake", "classes": list(classes), "input_shape": list(shape),
                    "mean": [0.5] * shape[0], "std": [0.3] * shape[0],
                    "counts": {"train": n_train, "val": n_val, "test": n_test}}
    return data


def write_fake_prepared(folder, **kwargs) -> dict:
    """prepared_data(**kwargs) written into `folder` as the preprocess stage writes it;
    returns its meta."""
    from cnnspec.data.datasets import write_prepared

    data = prepared_data(**kwargs)
    meta = data.pop("meta")
    write_prepared(Path(folder), data, meta)
    return meta


# ---------------------------------------------------------------------------------------
# CIFAR: a tar.gz of pickled dicts with bytes keys, as the Python 2 originals load.

def _pickled(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _add_file(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0  # the same arguments give the same archive bytes
    archive.addfile(info, io.BytesIO(payload))


def _write_tar_gz(path, folder: str, files: dict[str, bytes]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        folder_info = tarfile.TarInfo(folder)
        folder_info.type, folder_info.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(folder_info)
        for name, payload in files.items():
            _add_file(archive, f"{folder}/{name}", payload)
    with open(path, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as zipped:
        zipped.write(buffer.getvalue())
    return path


def _cifar_batch(images, labels, label_key: bytes, batch_label: str, start: int) -> dict:
    return {
        b"batch_label": batch_label.encode(),
        label_key: [int(label) for label in labels],
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"image_{start + i:06d}.png".encode() for i in range(len(images))],
    }


def make_cifar10_archive(path, n_train_per_class: int = 10, n_test_per_class: int = 5,
                         seed: int = 0, learnable: bool = True,
                         extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a cifar-10-python.tar.gz: cifar-10-batches-py/ with data_batch_1..5,
    test_batch and batches.meta. `extra_files` adds (or replaces) members of that folder."""
    rng = np.random.default_rng(seed)
    train_images, train_labels = class_images(n_train_per_class, 10, 3, 32, rng, learnable)
    test_images, test_labels = class_images(n_test_per_class, 10, 3, 32, rng, learnable)
    files = {"batches.meta": _pickled({b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                       b"num_cases_per_batch": -(-len(train_labels) // 5),
                                       b"num_vis": 3072})}
    starts = np.linspace(0, len(train_labels), 6).astype(int)
    for i in range(5):
        part = slice(starts[i], starts[i + 1])
        files[f"data_batch_{i + 1}"] = _pickled(_cifar_batch(
            train_images[part], train_labels[part], b"labels", f"training batch {i + 1} of 5", starts[i]))
    files["test_batch"] = _pickled(_cifar_batch(test_images, test_labels, b"labels", "testing batch 1 of 1", 0))
    files.update(extra_files or {})
    return _write_tar_gz(path, "cifar-10-batches-py", files)


def make_cifar100_archive(path, n_train_per_class: int = 2, n_test_per_class: int = 1,
                          seed: int = 0, learnable: bool = True) -> Path:
    """Write a cifar-100-python.tar.gz: cifar-100-python/ with train, test and meta."""
    rng = np.random.default_rng(seed)
    train_images, train_labels = class_images(n_train_per_class, 100, 3, 32, rng, learnable)
    test_images, test_labels = class_images(n_test_per_class, 100, 3, 32, rng, learnable)

    def batch(images, labels, name):
        content = _cifar_batch(images, labels, b"fine_labels", name, 0)
        content[b"coarse_labels"] = [int(label) // 5 for label in labels]
        return _pickled(content)

    files = {
        "meta": _pickled({b"fine_label_names": [f"fine_{k:02d}".encode() for k in range(100)],
                          b"coarse_label_names": [f"coarse_{k:02d}".encode() for k in range(20)]}),
        "train": batch(train_images, train_labels, "training"),
        "test": batch(test_images, test_labels, "testing"),
    }
    return _write_tar_gz(path, "cifar-100-python", files)


# ---------------------------------------------------------------------------------------
# MNIST: four gzipped idx files.

def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte idx file: magic 0x08 then rank, big-endian dimensions, data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def make_mnist_folder(folder, n_train_per_class: int = 10, n_test_per_class: int = 5,
                      seed: int = 0, learnable: bool = True) -> dict[str, str]:
    """Write the four MNIST idx .gz files (28x28 grey images, 10 classes) into `folder`.

    Returns file name -> md5, ready for `data.md5`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {"train": class_images(n_train_per_class, 10, 1, 28, rng, learnable),
              "t10k": class_images(n_test_per_class, 10, 1, 28, rng, learnable)}
    sums = {}
    for prefix, (images, labels) in splits.items():
        for name, array in ((f"{prefix}-images-idx3-ubyte.gz", images[:, 0]),
                            (f"{prefix}-labels-idx1-ubyte.gz", labels)):
            (folder / name).write_bytes(idx_gz_bytes(array))
            sums[name] = md5_of(folder / name)
    return sums


def idx_gz_bytes(array: np.ndarray) -> bytes:
    # Level 1: gzip's default level 9 took 9 s for 40,000 Fashion-MNIST images.
    return gzip.compress(idx_bytes(array), compresslevel=1, mtime=0)


def write_idx_mirror(folder, train_images, train_labels, test_images, test_labels) -> Path:
    """A download mirror of real images in MNIST's layout: the four idx .gz files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, images, labels in (("train", train_images, train_labels), ("t10k", test_images, test_labels)):
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(idx_gz_bytes(images))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(idx_gz_bytes(labels))
    return folder


# ---------------------------------------------------------------------------------------
# A web server on 127.0.0.1.

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def running_server(handler):
    """Run an HTTP server with `handler` on 127.0.0.1 on a free port in a thread;
    yields the base URL ("http://127.0.0.1:PORT", without a trailing slash)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def serve_folder(folder):
    """Serve `folder` over HTTP on 127.0.0.1 on a free port; yields the base URL."""
    with running_server(functools.partial(_QuietHandler, directory=str(folder))) as base_url:
        yield base_url
