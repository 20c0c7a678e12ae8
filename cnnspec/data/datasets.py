"""The datasets cnnspec knows, how to decode their raw files, and the prepared format.

Raw files (what the download stage leaves in data/raw/):
- CIFAR-10 / CIFAR-100: one .tar.gz of Python pickles, extracted to data/raw/extracted/.
- MNIST / Fashion-MNIST: four gzipped idx files side by side in data/raw/.

Prepared data (what the preprocess stage writes to data/prepared/, see
docs/architecture.md): {train,val,test}_images.npy uint8 (N, C, H, W),
{train,val,test}_labels.npy int64 (N,), and meta.json.
"""
from __future__ import annotations

import codecs
import gzip
import math
import pickle
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnspec import atomic
from cnnspec.errors import DataError, control_character
from cnnspec.paths import DOWNLOAD_HINT, PREPARED, PREPROCESS_HINT
from cnnspec.regular_files import not_a_regular_file, read_json

SPLITS = ("train", "val", "test")
USER_DATASETS = ("folder", "csv")  # the user's own files (cnnspec/data/user_datasets.py), nothing to download
EXTRACTED = "extracted"  # data/raw/<this>/ holds an archive's contents


@dataclass
class RawDataset:
    """A dataset decoded from its raw files, before the validation split."""

    train_images: np.ndarray  # uint8 (N, C, H, W)
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    url: str                      # official URL: the archive, or the folder of the files
    files: dict[str, str]         # official file name -> md5
    decode: Callable[[Path], RawDataset]  # the folder holding the files -> RawDataset
    archive_folder: str | None = None     # archives: the folder they unpack to

    @property
    def is_archive(self) -> bool:
        return self.archive_folder is not None

    def data_folder(self, raw: Path) -> Path:
        """Where the decoder finds the files under data/raw/."""
        raw = Path(raw)
        return raw / EXTRACTED / self.archive_folder if self.is_archive else raw


# ---------------------------------------------------------------------------------------
# CIFAR: pickles, read through an unpickler that can build numpy arrays and nothing else.

def _latin1_encode(text, encoding="latin1"):
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(text, "latin1").
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError("only latin-1 text may be encoded")
    return text.encode("latin1")


# numpy moved _reconstruct from numpy.core to numpy._core in 2.0; ask an array for it.
_reconstruct = np.zeros(0).__reduce__()[0]


class _ArrayClass:
    """numpy.ndarray as a CIFAR pickle names it: only ever _reconstruct's first argument.
    Called itself, ndarray((2_000_000, 3072)) claims 6 GB that no byte of the file holds
    (untouched until decoding concatenates the batches, and runs out of memory)."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("numpy.ndarray is called directly: an array not made of the file's bytes")


def _empty_array(array_class, shape, dtype):
    # numpy pickles an array as an empty one whose __setstate__ then brings the shape and
    # the bytes, so every byte of a real array is in the file
    if array_class is not _ArrayClass or not isinstance(shape, tuple) or shape != (0,):
        raise pickle.UnpicklingError(f"an array is rebuilt with shape {str(shape)[:40]}, not from "
                                     "the file's bytes")
    return _reconstruct(np.ndarray, (0,), dtype)


_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _empty_array,
    ("numpy._core.multiarray", "_reconstruct"): _empty_array,
    ("numpy", "ndarray"): _ArrayClass,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except numpy's array reconstruction, so a malicious
    archive cannot make decoding call os.system or the like."""

    def find_class(self, module, name):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed") from None


def read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            batch = _ArrayOnlyUnpickler(file, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {DOWNLOAD_HINT}") from None
    except Exception as error:  # a corrupt or hostile pickle: any failure is a data problem
        raise DataError(f"{path}: not a CIFAR batch: {error}") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR batch: holds a {type(batch).__name__}, not a dict")
    return batch


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = read_cifar_pickle(path)
    try:
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: not a CIFAR batch: bad or missing entry {error}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: b'data' must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(labels)} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels


def _label_names(path: Path, key: bytes) -> list[str]:
    names = read_cifar_pickle(path).get(key)
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: no {key!r} list of class names")
    return [_label_name(name, path) for name in names]


def _label_name(name, path: Path) -> str:
    """A class name from a CIFAR meta file: UTF-8 text that prints on one line (it reaches
    the checkpoint, which refuses it after a whole training otherwise, and predict's table)."""
    try:
        text = name.decode() if isinstance(name, bytes) else str(name)
    except UnicodeDecodeError:
        raise DataError(f"{path}: class name {name[:60]!r} is not UTF-8 text") from None
    control = control_character(text)
    if control is not None:
        raise DataError(f"{path}: class name {text[:60]!r} holds the control character U+{ord(control):04X}; "
                        "is data.url the dataset's archive?")
    return text


def _check_labels(labels: np.ndarray, classes: list[str], where: Path) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"{where}: labels must lie in 0..{len(classes) - 1}, "
                        f"found {labels.min()}..{labels.max()}")


def decode_cifar10(folder: Path) -> RawDataset:
    folder = Path(folder)
    classes = _label_names(folder / "batches.meta", b"label_names")
    parts = [read_cifar_batch(folder / f"data_batch_{i}", b"labels") for i in range(1, 6)]
    train_images = np.concatenate([images for images, _ in parts])
    train_labels = np.concatenate([labels for _, labels in parts])
    test_images, test_labels = read_cifar_batch(folder / "test_batch", b"labels")
    _check_labels(train_labels, classes, folder / "data_batch_*")
    _check_labels(test_labels, classes, folder / "test_batch")
    return RawDataset(train_images, train_labels, test_images, test_labels, classes)


def decode_cifar100(folder: Path) -> RawDataset:
    folder = Path(folder)
    classes = _label_names(folder / "meta", b"fine_label_names")
    train_images, train_labels = read_cifar_batch(folder / "train", b"fine_labels")
    test_images, test_labels = read_cifar_batch(folder / "test", b"fine_labels")
    _check_labels(train_labels, classes, folder / "train")
    _check_labels(test_labels, classes, folder / "test")
    return RawDataset(train_images, train_labels, test_images, test_labels, classes)


# ---------------------------------------------------------------------------------------
# MNIST-style idx files: a big-endian header (magic, then one uint32 per dimension), then bytes.

IDX_UBYTE_MAGIC = {1: 0x00000801, 3: 0x00000803}  # rank -> magic number of unsigned-byte data
MAX_IDX_BYTES = 1 << 30  # one idx file's data, decompressed: 20 times Fashion-MNIST's training images


def read_idx(path: Path, rank: int) -> np.ndarray:
    """The uint8 array of a gzipped idx file, decompressed no further than its header
    promises (at most MAX_IDX_BYTES): a mirror's gzip bomb stops at the header."""
    header_size = 4 * (1 + rank)
    try:
        with gzip.open(path, "rb") as file:
            header = file.read(header_size)
            if len(header) < header_size:
                raise DataError(f"{path}: truncated idx header")
            magic, *shape = np.frombuffer(header, dtype=">u4").tolist()
            if magic != IDX_UBYTE_MAGIC[rank]:
                raise DataError(f"{path}: idx magic number {magic:#010x}, expected {IDX_UBYTE_MAGIC[rank]:#010x}")
            if 0 in shape[1:]:  # images of no pixels: nothing a model could read
                raise DataError(f"{path}: header promises images of shape {shape[1:]}; an image needs "
                                "at least one pixel")
            promised = math.prod(shape)
            if promised > MAX_IDX_BYTES:
                raise DataError(f"{path}: header promises shape {shape}, {promised:,} bytes; "
                                f"refused above {MAX_IDX_BYTES:,} (Fashion-MNIST's largest file holds 47 MB)")
            body = file.read(promised)
            extra = len(file.read(1))
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {DOWNLOAD_HINT}") from None
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: not a gzip file: {error}") from None
    if len(body) != promised or extra:
        found = f"more than {promised:,}" if extra else f"{len(body)}"
        raise DataError(f"{path}: {found} bytes of data, header promises shape {shape}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _mnist_decoder(classes: list[str]) -> Callable[[Path], RawDataset]:
    def decode(folder: Path) -> RawDataset:
        folder = Path(folder)

        def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
            images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rank=3)
            labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rank=1).astype(np.int64)
            if len(images) != len(labels):
                raise DataError(f"{folder / prefix}-*: {len(labels)} labels for {len(images)} images")
            _check_labels(labels, classes, folder / f"{prefix}-labels-idx1-ubyte.gz")
            return images[:, None, :, :], labels

        train_images, train_labels = split("train")
        test_images, test_labels = split("t10k")
        return RawDataset(train_images, train_labels, test_images, test_labels, list(classes))

    return decode


# ---------------------------------------------------------------------------------------
# The registry.

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _cifar(name: str, archive: str, md5: str, decode, archive_folder: str) -> DatasetInfo:
    """CIFAR-10 and -100: one archive each on the authors' page."""
    return DatasetInfo(name=name, url=f"https://www.cs.toronto.edu/~kriz/{archive}", files={archive: md5},
                       decode=decode, archive_folder=archive_folder)


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": _cifar("cifar10", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                      decode_cifar10, archive_folder="cifar-10-batches-py"),
    "cifar100": _cifar("cifar100", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                       decode_cifar100, archive_folder="cifar-100-python"),
    "mnist": DatasetInfo(  # the mirror torchvision tries first; yann.lecun.com often refuses
        name="mnist",
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        decode=_mnist_decoder([str(digit) for digit in range(10)]),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        decode=_mnist_decoder(FASHION_CLASSES),
    ),
}


def get_dataset(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"data.dataset: unknown dataset '{name}'; "
                        f"choose one of {', '.join(DATASETS)}, folder, csv") from None


def decode_raw(name: str, raw: Path) -> RawDataset:
    """Decode the files the download stage left in `raw` (data/raw/)."""
    info = get_dataset(name)
    folder = info.data_folder(raw)
    if not folder.is_dir():
        raise DataError(f"{folder}: missing; {DOWNLOAD_HINT}")
    return info.decode(folder)


# ---------------------------------------------------------------------------------------
# Preprocessing: a stratified validation split and the training split's statistics.

AUTO_VAL_IMAGES = 1000          # data.val_split: auto holds out about this many images,
AUTO_VAL_SHARE = (0.02, 0.2)    # but at least and at most these shares of the training set


def val_fraction(val_split, training_images: int) -> float:
    """data.val_split as a fraction: a number as written; `auto` about 1,000 validation images,
    2% to 20% of the `training_images` (rounded to two digits): the built-ins' 50,000-60,000
    give 0.02, a few hundred images of one's own 0.2, enough for early stopping to steer by.
    Prints the fraction `auto` chose."""
    if val_split != "auto":
        return val_split
    low, high = AUTO_VAL_SHARE
    fraction = float(f"{min(high, max(low, AUTO_VAL_IMAGES / max(1, training_images))):.2g}")
    print(f"data.val_split auto: {fraction:g} of {training_images:,} training images held out for "
          f"validation (auto aims at {AUTO_VAL_IMAGES:,} images, within {low:.0%} to {high:.0%})")
    return fraction


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int,
                     param: str = "data.val_split") -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), each sorted: every class gives round(val_fraction * its count)
    images to validation (but keeps at least one for training), picked at random by `seed`.
    A fraction above 0 that rounds to no image at all is warned about, naming `param`."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"{param}: {val_fraction} must be at least 0 and below 1")
    rng = np.random.default_rng(seed)
    val_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_val = min(int(round(val_fraction * len(members))), len(members) - 1)
        val_parts.append(rng.permutation(members)[:n_val])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, dtype=np.int64)
    if val_fraction > 0 and len(val) == 0 and len(labels):
        print(f"warning: {param} {val_fraction:g} gives that split no image ({len(labels)} images; each "
              f"class gives round({val_fraction:g} x its count)); raise it", file=sys.stderr)
    train = np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
    return train.astype(np.int64), val.astype(np.int64)


def channel_mean_std(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 (N, C, H, W) images, in pixel/255 units.

    Exact and light on memory: counts each of the 256 pixel values per channel, a
    chunk of images at a time, instead of converting the whole array to floats."""
    if len(images) == 0:
        raise DataError("the training split is empty: no images to compute mean and std from")
    channels = images.shape[1]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk]
        for channel in range(channels):  # bincount of the uint8 pixels: 4x faster than offsetting int64 copies
            counts[channel] += np.bincount(block[:, channel].ravel(), minlength=256)
    return histogram_mean_std(counts)


def histogram_mean_std(counts: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std from (C, 256) counts of each pixel value."""
    values = np.arange(256) / 255.0
    total = counts.sum(axis=1)
    mean = counts @ values / total
    variance = (counts * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    return mean.tolist(), np.sqrt(variance).tolist()


class Normalize:
    """(pixels / 255 - mean) / std, per channel, with the training split's mean and std
    (meta.json, pixel/255 units), as one multiply-add on the device. Training,
    validation and test images all go through this one formula."""

    def __init__(self, mean, std, device):
        import torch

        mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std

    def __call__(self, pixels):
        """Normalized float32 of a uint8 batch (N, C, H, W) on the same device."""
        return self.shift.addcmul(pixels.float(), self.scale)


def prepare(raw: RawDataset, dataset: str, val_split, seed: int) -> tuple[dict, dict]:
    """Split and describe a decoded dataset: (arrays by file stem, meta.json contents).
    `val_split`: data.val_split, a fraction or auto."""
    train, val = stratified_split(raw.train_labels, val_fraction(val_split, len(raw.train_labels)), seed)
    arrays = {
        "train_images": np.ascontiguousarray(raw.train_images[train]),
        "train_labels": raw.train_labels[train].astype(np.int64),
        "val_images": np.ascontiguousarray(raw.train_images[val]),
        "val_labels": raw.train_labels[val].astype(np.int64),
        "test_images": np.ascontiguousarray(raw.test_images),
        "test_labels": raw.test_labels.astype(np.int64),
    }
    mean, std = channel_mean_std(arrays["train_images"])
    meta = {
        "dataset": dataset,
        "classes": list(raw.classes),
        "input_shape": list(raw.train_images.shape[1:]),
        # how an image file becomes this input (predict reads files the same way): the
        # built-ins' native size, no resize
        "image_size": list(raw.train_images.shape[2:]),
        "resize": "stretch",
        "channels": int(raw.train_images.shape[1]),
        "mean": mean,
        "std": std,
        "counts": {split: int(len(arrays[f"{split}_labels"])) for split in SPLITS},
    }
    return arrays, meta


def write_prepared(folder, arrays: dict, meta: dict) -> None:
    """Write prepared arrays and meta.json into `folder`: all files or none."""
    with atomic.atomic_folder(folder) as temporary:
        for stem, array in arrays.items():
            atomic.save_numpy(temporary / f"{stem}.npy", array)
        atomic.write_json(temporary / "meta.json", meta)


# ---------------------------------------------------------------------------------------
# Reading prepared data (what train, evaluate and plot use).



def load_prepared(folder=PREPARED, mmap_mode: str | None = None) -> dict:
    """{"train_images", "train_labels", "val_images", ..., "test_labels": arrays, "meta": dict}.

    A missing file says to run preprocess; a damaged one (truncated, not an array, or
    not what meta.json describes) is named with the way to rebuild the folder."""
    from cnnspec.data import integrity

    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not_a_regular_file(meta_path) == "missing":
        raise DataError(f"{meta_path}: missing; {PREPROCESS_HINT}")
    try:
        meta = read_json(meta_path)
    except ValueError as error:
        raise DataError(f"{meta_path}: damaged ({' '.join(str(error).split())}); "
                        f"{integrity.REPREPARE_HINT}") from None
    integrity.check_meta(meta, meta_path)
    prepared = {"meta": meta}
    for split in SPLITS:
        for kind in ("images", "labels"):
            path = folder / f"{split}_{kind}.npy"
            problem = not_a_regular_file(path)
            if problem == "missing":
                raise DataError(f"{path}: missing; {PREPROCESS_HINT}")
            if problem:  # a folder or a FIFO is not an array that preprocess forgot to write
                raise DataError(f"{path}: {problem}, not a regular file; {integrity.REPREPARE_HINT}")
            try:
                # mapped first, in any mode: a header promising terabytes is checked against
                # meta.json below before anything that size is read into memory
                prepared[f"{split}_{kind}"] = integrity.load_npy(path, mmap_mode=mmap_mode or "r")
            except ValueError as error:
                raise DataError(f"{path}: damaged or truncated ({error}); "
                                f"{integrity.REPREPARE_HINT}") from None
        integrity.check_split(prepared[f"{split}_images"], prepared[f"{split}_labels"], split, meta, folder)
        if mmap_mode is None:  # read into memory, as asked, once they are known to fit meta.json
            for kind in ("images", "labels"):
                prepared[f"{split}_{kind}"] = np.array(prepared[f"{split}_{kind}"])
    return prepared


FILES_JSON = "files.json"  # folder/csv: {split: [each image's path, relative to data.source]}


def split_files(folder=PREPARED, split: str = "test") -> list[str] | None:
    """The file of each image of `split`, in array order, for folder and csv datasets
    (preprocess writes files.json); None for the built-ins or a damaged list."""
    path = Path(folder) / FILES_JSON
    try:
        files = read_json(path).get(split)
    except (ValueError, AttributeError):
        return None
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        return None
    return files
