"""Decoding the raw formats (safely), the registry, and reading prepared data."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnspec.data.archives import safe_extract
from cnnspec.data.datasets import (
    DATASETS,
    decode_cifar10,
    decode_cifar100,
    decode_raw,
    get_dataset,
    load_prepared,
    read_cifar_batch,
    read_idx,
    write_prepared,
)
from cnnspec.errors import DataError
from tests.fakedata import (
    CIFAR10_CLASSES,
    class_images,
    idx_bytes,
    make_cifar10_archive,
    make_cifar100_archive,
    make_mnist_folder,
)
from tests.fuzzing import bounded, examples


def extract(archive: Path, tmp_path: Path, folder: str) -> Path:
    return safe_extract(archive, tmp_path / "extracted") / folder


def test_registry_has_the_four_datasets_with_official_sums():
    assert set(DATASETS) == {"cifar10", "cifar100", "mnist", "fashion-mnist"}
    assert DATASETS["cifar10"].files == {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}
    assert DATASETS["cifar100"].files == {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"}
    for name in ("mnist", "fashion-mnist"):
        assert sorted(DATASETS[name].files) == sorted(
            f"{split}-{kind}.gz" for split in ("train", "t10k")
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))
        assert all(len(md5) == 32 for md5 in DATASETS[name].files.values())
    with pytest.raises(DataError, match="unknown dataset 'cifar11'; choose one of cifar10"):
        get_dataset("cifar11")


def test_cifar10_decodes_to_the_generated_images(tmp_path):
    archive = make_cifar10_archive(tmp_path / "c.tar.gz", n_train_per_class=3, n_test_per_class=2, seed=5)
    raw = decode_cifar10(extract(archive, tmp_path, "cifar-10-batches-py"))
    expected_train, expected_labels = class_images(3, 10, 3, 32, np.random.default_rng(5))
    assert raw.classes == CIFAR10_CLASSES
    assert raw.train_images.dtype == np.uint8 and raw.train_images.shape == (30, 3, 32, 32)
    np.testing.assert_array_equal(raw.train_images, expected_train)
    np.testing.assert_array_equal(raw.train_labels, expected_labels)
    assert raw.test_images.shape == (20, 3, 32, 32) and raw.test_labels.dtype == np.int64
    assert np.bincount(raw.test_labels).tolist() == [2] * 10


def test_cifar100_decodes_fine_labels(tmp_path):
    archive = make_cifar100_archive(tmp_path / "c.tar.gz", n_train_per_class=1, n_test_per_class=1)
    raw = decode_cifar100(extract(archive, tmp_path, "cifar-100-python"))
    assert len(raw.classes) == 100 and raw.classes[7] == "fine_07"
    assert raw.train_images.shape == (100, 3, 32, 32)
    assert sorted(raw.train_labels.tolist()) == list(range(100))


def test_mnist_folder_decodes(tmp_path):
    make_mnist_folder(tmp_path, n_train_per_class=2, n_test_per_class=1, seed=3)
    raw = decode_raw("mnist", tmp_path)
    expected, labels = class_images(2, 10, 1, 28, np.random.default_rng(3))
    assert raw.train_images.shape == (20, 1, 28, 28)
    np.testing.assert_array_equal(raw.train_images, expected)
    np.testing.assert_array_equal(raw.train_labels, labels)
    assert raw.classes == [str(d) for d in range(10)]
    assert decode_raw("fashion-mnist", tmp_path).classes[0] == "T-shirt/top"


class Exploit:
    """Unpickling this would call os.system; the decoder must refuse before that."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_in_a_cifar_archive_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    hostile = pickle.dumps({b"data": Exploit(marker), b"labels": []}, protocol=2)
    archive = make_cifar10_archive(tmp_path / "c.tar.gz", 1, 1, extra_files={"data_batch_3": hostile})
    folder = extract(archive, tmp_path, "cifar-10-batches-py")
    with pytest.raises(DataError) as caught:
        decode_cifar10(folder)
    message = str(caught.value)
    assert "data_batch_3" in message and "not allowed" in message and "\n" not in message
    assert not marker.exists()
    # The same pickle through the plain unpickler does run: the test's exploit is real.
    pickle.loads(hostile)
    assert marker.exists()


class ClaimedArray:
    """Pickles as numpy.ndarray(shape) or _reconstruct(ndarray, shape): an array of
    `shape` built by the unpickler from no bytes of the file."""

    def __init__(self, shape, direct=True):
        self.shape, self.direct = shape, direct

    def __reduce__(self):
        if self.direct:
            return (np.ndarray, (self.shape, np.dtype(np.uint8)))
        return (np.zeros(0).__reduce__()[0], (np.ndarray, self.shape, b"B"))


def _claiming(**arrays) -> bytes:
    return pickle.dumps({b"data": arrays["data"], b"labels": arrays["labels"]}, protocol=2)


@pytest.mark.parametrize("content, problem", [
    # 2,000,000 images (6 GB, never touched) and labels in a 240-byte file: decoding
    # concatenated five such batches and ran out of memory
    (_claiming(data=ClaimedArray((2_000_000, 3072)), labels=ClaimedArray((2_000_000,))),
     "numpy.ndarray is called directly"),
    (_claiming(data=ClaimedArray((2_000_000, 3072), direct=False), labels=[0]),
     "an array is rebuilt with shape (2000000, 3072)"),
    (pickle.dumps([1, 2, 3]), "holds a list"),
    (pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}), "uint8 [N, 3072]"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "1 labels for 2 images"),
    (pickle.dumps({b"labels": [0]}), "bad or missing entry"),
    (b"garbage", "not a CIFAR batch"),
])
def test_malformed_cifar_batch_is_a_one_line_data_error(tmp_path, content, problem):
    (tmp_path / "batch").write_bytes(content)
    with pytest.raises(DataError, match=re.escape(problem)) as caught:
        read_cifar_batch(tmp_path / "batch", b"labels")
    assert str(tmp_path / "batch") in str(caught.value)


@pytest.mark.parametrize("name, problem", [
    (b"cat\nerror: all good", r"class name 'cat\\nerror: all good' holds the control character U\+000A"),
    (b"\x1b[2Jdog", r"class name '\\x1b\[2Jdog' holds the control character U\+001B"),
    (b"caf\xe9", r"class name b'caf\\xe9' is not UTF-8 text"),
], ids=["newline", "escape", "latin-1"])
def test_cifar_class_names_that_do_not_print_or_decode_are_one_line(tmp_path, name, problem):
    # before, a line break reached meta.json and the checkpoint, refused only after training;
    # a byte that is not UTF-8 was a UnicodeDecodeError traceback
    names = [name] + [f"class{index}".encode() for index in range(9)]
    meta = pickle.dumps({b"label_names": names}, protocol=2)
    archive = make_cifar10_archive(tmp_path / "c.tar.gz", 1, 1, extra_files={"batches.meta": meta})
    with pytest.raises(DataError) as caught:
        decode_cifar10(extract(archive, tmp_path, "cifar-10-batches-py"))
    message = str(caught.value)
    assert "batches.meta" in message and re.search(problem, message) and "\n" not in message, message


def test_out_of_range_labels_are_refused(tmp_path):
    bad = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, protocol=2)
    archive = make_cifar10_archive(tmp_path / "c.tar.gz", 1, 1, extra_files={"test_batch": bad})
    with pytest.raises(DataError, match="test_batch: labels must lie in 0..9, found 10..10"):
        decode_cifar10(extract(archive, tmp_path, "cifar-10-batches-py"))


def test_idx_header_is_checked(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 4, 4), np.uint8))))
    assert read_idx(path, rank=3).shape == (2, 4, 4)
    with pytest.raises(DataError, match="magic number 0x00000803, expected 0x00000801"):
        read_idx(path, rank=1)
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 4, 4), np.uint8))[:-3]))
    with pytest.raises(DataError, match="29 bytes of data, header promises shape \\[2, 4, 4\\]"):
        read_idx(path, rank=3)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="not a gzip file"):
        read_idx(path, rank=3)


def test_an_idx_gzip_bomb_stops_at_its_header(tmp_path):
    """A mirror's file is decompressed no further than its header promises, and a header
    promising more than MAX_IDX_BYTES is refused before any data is read."""
    path = tmp_path / "bomb.gz"
    huge_header = np.array([0x803, 60000, 1000, 1000], dtype=">u4").tobytes()  # 60 GB promised
    path.write_bytes(gzip.compress(huge_header + bytes(1 << 20)))
    with pytest.raises(DataError, match=r"bomb.gz: header promises shape \[60000, 1000, 1000\], "
                                        r"60,000,000,000 bytes; refused above 1,073,741,824"):
        read_idx(path, rank=3)
    small = idx_bytes(np.zeros((2, 4, 4), np.uint8))
    path.write_bytes(gzip.compress(small + bytes(64 << 20)))  # 64 MB of zeros behind 32 bytes of data
    with pytest.raises(DataError, match=r"more than 32 bytes of data, header promises shape \[2, 4, 4\]"):
        read_idx(path, rank=3)



FUZZ = settings()  # the loaded profile (tests/fuzzing.py)


@st.composite
def idx_files(draw) -> bytes:
    """Gzipped idx files of any header and any data, most of them nearly right."""
    rank = draw(st.sampled_from([1, 3]))
    magic = draw(st.sampled_from([0x801, 0x803, draw(st.integers(0, 2**32 - 1))]))
    shape = draw(st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)), min_size=rank, max_size=rank))
    header = np.array([magic, *shape], dtype=">u4").tobytes()[:draw(st.integers(0, 4 * (1 + rank)))]
    data = draw(st.binary(max_size=300))
    payload = gzip.compress(header + data)
    if draw(st.booleans()):  # a damaged stream
        cut = draw(st.integers(0, len(payload)))
        payload = payload[:cut] + draw(st.binary(max_size=20))
    return payload


@settings(FUZZ, max_examples=examples(200))
@given(idx_files(), st.sampled_from([1, 3]))
def test_random_idx_files_decode_to_their_header_s_shape_or_raise_a_data_error(tmp_path_factory, payload, rank):
    path = tmp_path_factory.mktemp("idx") / "x.gz"
    path.write_bytes(payload)
    with bounded(seconds=5, megabytes=64):
        try:
            array = read_idx(path, rank)
        except DataError as error:
            assert str(error).startswith(str(path)) and "\n" not in str(error)
        else:
            header = gzip.decompress(payload)[:4 * (1 + rank)]
            assert list(array.shape) == np.frombuffer(header, dtype=">u4").tolist()[1:]
            assert array.dtype == np.uint8


def test_decode_raw_before_download_names_the_stage(tmp_path):
    with pytest.raises(DataError, match="extracted/cifar-10-batches-py: missing; run the download stage"):
        decode_raw("cifar10", tmp_path)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: missing; run the download stage"):
        decode_raw("mnist", tmp_path)


def _prepared_arrays(n_train=6, n_val=2, n_test=3):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 3, 4, 4), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, n).astype(np.int64)
    meta = {"dataset": "cifar10", "classes": ["a", "b"], "input_shape": [3, 4, 4], "mean": [0.5] * 3,
            "std": [0.2] * 3, "counts": {"train": n_train, "val": n_val, "test": n_test}}
    return arrays, meta


def test_load_prepared_round_trip(tmp_path):
    arrays, meta = _prepared_arrays()
    write_prepared(tmp_path / "prepared", arrays, meta)
    loaded = load_prepared(tmp_path / "prepared")
    assert loaded["meta"] == meta
    for name, array in arrays.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype


def test_load_prepared_names_the_missing_file_and_the_stage(tmp_path):
    with pytest.raises(DataError, match=r"meta.json: missing; run the preprocess stage"):
        load_prepared(tmp_path)
    arrays, meta = _prepared_arrays()
    write_prepared(tmp_path / "prepared", arrays, meta)
    (tmp_path / "prepared" / "val_labels.npy").unlink()
    with pytest.raises(DataError, match=r"val_labels.npy: missing; run the preprocess stage"):
        load_prepared(tmp_path / "prepared")


def test_load_prepared_refuses_arrays_that_disagree_with_meta(tmp_path):
    arrays, meta = _prepared_arrays()
    meta["counts"]["test"] = 99
    write_prepared(tmp_path / "prepared", arrays, meta)
    with pytest.raises(DataError, match="test_labels.npy: .* but meta.json counts 99 .*dvc repro -f preprocess"):
        load_prepared(tmp_path / "prepared")
    (tmp_path / "prepared" / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json: damaged .*dvc repro -f preprocess"):
        load_prepared(tmp_path / "prepared")


def test_a_split_fraction_that_rounds_to_no_image_is_warned_about(capsys):
    from cnnspec.data.datasets import stratified_split

    labels = np.arange(300) % 3  # 100 images a class: 0.001 of 100 rounds to none
    train, val = stratified_split(labels, 0.001, seed=0)
    assert len(val) == 0 and len(train) == 300
    assert capsys.readouterr().err == ("warning: data.val_split 0.001 gives that split no image (300 images; "
                                       "each class gives round(0.001 x its count)); raise it\n")
    train, val = stratified_split(labels, 0.1, seed=0, param="data.test_split")
    assert len(val) == 30 and capsys.readouterr().err == ""
    stratified_split(labels, 0.0, seed=0)  # 0 asks for no split: nothing to say
    assert capsys.readouterr().err == ""


def test_an_idx_of_images_with_no_pixels_is_refused_at_its_header(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((100, 0, 0), np.uint8))))
    with pytest.raises(DataError, match=r"header promises images of shape \[0, 0\]; an image needs at least one"):
        read_idx(path, rank=3)


@pytest.mark.parametrize("change, words", [
    ({"std": ["x", 0.2, 0.2]}, "std ['x', 0.2, 0.2] is not a list of finite numbers"),
    ({"std": [None, 0.2, 0.2]}, "std [None, 0.2, 0.2] is not a list of finite numbers"),
    ({"std": [0.0, 0.2, 0.2]}, "std [0.0, 0.2, 0.2] must be above 0"),
    ({"mean": [1e308, 0.5, 0.5]}, "mean [1e+308, 0.5, 0.5] is not in 0..1"),
    ({"classes": [0, 1]}, "classes is not a list of class names"),
], ids=["std-text", "std-null", "std-zero", "mean-huge", "classes-numbers"])
def test_meta_json_statistics_and_classes_edited_by_hand_name_the_file(tmp_path, change, words):
    arrays, meta = _prepared_arrays()
    write_prepared(tmp_path / "prepared", arrays, meta)
    meta_path = tmp_path / "prepared" / "meta.json"
    edited = json.loads(meta_path.read_text()) | change
    meta_path.write_text(json.dumps(edited))
    with pytest.raises(DataError) as caught:
        load_prepared(tmp_path / "prepared")
    assert str(caught.value).startswith(f"{meta_path}: {words}") and "preprocess" in str(caught.value)


def test_a_npy_header_promising_terabytes_is_refused_before_it_is_read_into_memory(tmp_path):
    from numpy.lib import format as npy_format

    arrays, meta = _prepared_arrays()
    write_prepared(tmp_path / "prepared", arrays, meta)
    path = tmp_path / "prepared" / "train_images.npy"
    with open(path, "wb") as file:  # a header for 10**12 images, and no data after it
        npy_format.write_array_header_1_0(file, {"descr": "|u1", "fortran_order": False,
                                                 "shape": (10**12, 3, 4, 4)})
    with pytest.raises(DataError, match=r"train_images.npy: damaged or truncated"):
        load_prepared(tmp_path / "prepared")  # not memory-mapped: it used to try to allocate it all
    loaded = load_prepared(_rewrite(tmp_path / "again", arrays, meta))
    assert not isinstance(loaded["train_images"], np.memmap)  # in memory, as asked
    assert np.array_equal(loaded["train_images"], arrays["train_images"])


def _rewrite(folder, arrays, meta):
    write_prepared(folder, arrays, meta)
    return folder
