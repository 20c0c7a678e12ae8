"""folder and csv datasets on real images (Fashion-MNIST written to files here):
layouts, splits, the bad inputs each with its one-line answer, parallel decoding,
and the prepared files (whole or absent, loadable as memory maps)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cnnspec.data import listing
from cnnspec.data import user_datasets as imagesets
from cnnspec.data.datasets import load_prepared
from cnnspec.data.images import ImageReadError
from cnnspec.errors import DataError
from cnnspec.pipeline.params import load_params
from tests.imagefiles import FASHION, class_folder_name, fashion_subset, write_colour_set, write_csv, write_image_folder

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not FASHION.is_dir(),
                                reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)")


@pytest.fixture(scope="module")
def fashion():
    return fashion_subset(200, 60)


def data_params(tmp_path, **changes) -> dict:
    data = load_params(REPO_ROOT / "params.yaml", ["data"])["data"]
    data.update(dataset="folder", image_size=[28, 28], channels=1, val_split=0.1, test_split=0.2)
    data.update(changes)
    return data


def folder_of(tmp_path, fashion, n=60, split=None, suffix=".png") -> Path:
    root = tmp_path / "images"
    write_image_folder(root, fashion[0][:n], fashion[1][:n], suffix, split=split)
    return root


def prepare(tmp_path, data, workers=1, log=None):
    lines = []
    meta = imagesets.prepare_image_dataset(data, tmp_path / "prepared", workers=workers,
                                           log=log or lines.append)
    return meta, load_prepared(tmp_path / "prepared", mmap_mode="r"), lines


# ---------------------------------------------------------------- layouts and splits

def test_folder_without_splits_holds_out_a_stratified_seeded_test_split(tmp_path, fashion):
    root = folder_of(tmp_path, fashion, n=200)
    meta, prepared, lines = prepare(tmp_path, data_params(tmp_path, source=str(root)))
    names = sorted({class_folder_name(label) for label in fashion[1][:200]})
    assert meta["classes"] == names
    assert meta["image_size"] == [28, 28] and meta["channels"] == 1 and meta["resize"] == "stretch"
    assert meta["input_shape"] == [1, 28, 28]
    assert sum(meta["counts"].values()) == 200
    per_class = np.bincount(fashion[1][:200], minlength=10)
    test_per_class = np.bincount(prepared["test_labels"], minlength=10)
    folder_order = [names.index(class_folder_name(i)) for i in range(10)]
    assert np.abs(test_per_class[folder_order] - 0.2 * per_class).max() <= 1  # stratified
    assert any(line.startswith("images per class: ") for line in lines)
    again = listing.assign_splits(listing.scan_folder(root), 0.1, 0.2, seed=0)[1]
    other = listing.assign_splits(listing.scan_folder(root), 0.1, 0.2, seed=1)[1]
    positional_seed = listing.assign_splits(listing.scan_folder(root), 0.1, 0.2, 0)[1]
    assert np.array_equal(again["test"][0], positional_seed["test"][0])
    assert not np.array_equal(again["test"][0], other["test"][0])


def test_presplit_folder_keeps_its_splits_and_the_pixels(tmp_path, fashion):
    root = tmp_path / "images"
    write_image_folder(root, fashion[0][:100], fashion[1][:100], ".png", split="train")
    write_image_folder(root, fashion[2][:30], fashion[3][:30], ".png", split="test")
    meta, prepared, _ = prepare(tmp_path, data_params(tmp_path, source=str(root), val_split=0.0))
    assert meta["counts"] == {"train": 100, "val": 0, "test": 30}
    # PNG is lossless: the test images are the idx pixels, in class-then-file order
    order = sorted(range(30), key=lambda i: (class_folder_name(fashion[3][i]), i))
    assert np.array_equal(prepared["test_images"][:, 0], fashion[2][:30][order])
    assert [meta["classes"][k] for k in prepared["test_labels"]] == \
        [class_folder_name(fashion[3][i]) for i in order]


def test_csv_with_renamed_columns_and_a_split_column(tmp_path, fashion):
    root = tmp_path / "shop"
    paths = write_image_folder(root / "pictures", fashion[0][:40], fashion[1][:40], ".jpg")
    rows = [{"file": str(p.relative_to(root)), "kind": f"k{fashion[1][i] % 3}",
             "part": "test" if i % 4 == 0 else "train"} for i, p in enumerate(paths)]
    data = data_params(tmp_path, dataset="csv", source=str(write_csv(root / "labels.csv", rows)),
                       csv={"path_column": "file", "label_column": "kind", "split_column": "part"})
    meta, prepared, _ = prepare(tmp_path, data)
    assert meta["classes"] == ["k0", "k1", "k2"]
    assert meta["counts"]["test"] == 10 and meta["counts"]["train"] + meta["counts"]["val"] == 30
    assert prepared["train_images"].shape[1:] == (1, 28, 28)


def test_a_csv_of_a_folders_images_gives_its_arrays_whatever_the_row_order(tmp_path, fashion):
    root = folder_of(tmp_path, fashion, n=150)
    rows = [{"path": p.relative_to(root).as_posix(), "label": p.parent.name} for p in sorted(root.rglob("*.png"))]
    _, from_folder, _ = prepare(tmp_path / "folder", data_params(tmp_path, source=str(root)))
    for name, order in (("sorted.csv", rows), ("reversed.csv", rows[::-1])):
        manifest = write_csv(root / name, order)
        _, from_csv, _ = prepare(tmp_path / name, data_params(tmp_path, dataset="csv", source=str(manifest)))
        for key in ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels"):
            assert np.array_equal(from_csv[key], from_folder[key]), (name, key)
        assert (tmp_path / name / "prepared" / "files.json").read_bytes() == \
            (tmp_path / "folder" / "prepared" / "files.json").read_bytes()


def test_parallel_decoding_writes_the_same_files(tmp_path, fashion, monkeypatch):
    monkeypatch.setattr(imagesets, "BATCH_IMAGES", 8)  # several tasks per worker
    root = folder_of(tmp_path, fashion, n=200, suffix=".jpg")
    data = data_params(tmp_path, source=str(root))
    one = imagesets.prepare_image_dataset(data, tmp_path / "one", workers=1, log=lambda line: None)
    two = imagesets.prepare_image_dataset(data, tmp_path / "two", workers=2, log=lambda line: None)
    assert one == two
    for name in ("train_images", "val_images", "test_images", "train_labels", "test_labels"):
        assert (tmp_path / "one" / f"{name}.npy").read_bytes() == (tmp_path / "two" / f"{name}.npy").read_bytes()


def decode_then_die_like_the_oom_killer(*args):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def test_a_decoding_worker_that_dies_is_one_line_and_keeps_the_old_prepared_data(tmp_path, fashion, monkeypatch):
    monkeypatch.setattr(imagesets, "BATCH_IMAGES", 8)  # enough tasks for a pool of workers
    root = folder_of(tmp_path, fashion, n=60)
    data = data_params(tmp_path, source=str(root))
    prepare(tmp_path, data)
    before = (tmp_path / "prepared" / "train_images.npy").read_bytes()
    monkeypatch.setattr(imagesets, "_decode_batch", decode_then_die_like_the_oom_killer)
    with pytest.raises(DataError) as caught:
        prepare(tmp_path, data, workers=2)
    assert str(caught.value) == imagesets.WORKER_DIED
    assert "a decoding worker died" in imagesets.WORKER_DIED and "\n" not in imagesets.WORKER_DIED
    assert (tmp_path / "prepared" / "train_images.npy").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared")]


def test_mixed_formats_modes_and_sizes_become_rgb_of_one_size(tmp_path):
    expected = write_colour_set(tmp_path / "colours", per_class=8)
    for resize in ("stretch", "center_crop"):
        data = data_params(tmp_path, source=str(tmp_path / "colours"), image_size=[16, 24], channels=3,
                           resize=resize, val_split=0.0, test_split=0.25)
        meta, prepared, _ = prepare(tmp_path, data)
        assert meta["classes"] == ["cool", "warm"] and meta["resize"] == resize
        images = np.concatenate([prepared["train_images"], prepared["test_images"]])
        labels = np.concatenate([prepared["train_labels"], prepared["test_labels"]])
        assert images.shape == (16, 3, 16, 24)
        colour_images = [channel for channel in expected.values() if channel is not None]
        means = images.reshape(16, 3, -1).mean(axis=2)
        dominant = means.argmax(axis=1)
        coloured = means.std(axis=1) > 20  # grayscale files decode to equal channels
        assert coloured.sum() == len(colour_images)
        assert all(dominant[coloured] == np.where(labels[coloured] == 1, 0, 2))  # warm: red, cool: blue


# ---------------------------------------------------------------- bad input

def damage(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])  # a truncated image


def test_bad_image_fail_names_the_file_and_leaves_the_old_prepared_data(tmp_path, fashion):
    root = folder_of(tmp_path, fashion)
    data = data_params(tmp_path, source=str(root))
    prepare(tmp_path, data)
    before = (tmp_path / "prepared" / "train_images.npy").read_bytes()
    victim = sorted(root.glob("*/*.png"))[7]
    damage(victim)
    with pytest.raises(ImageReadError) as error:
        prepare(tmp_path, data)
    message = str(error.value)
    assert str(victim) in message and "data.bad_images" in message and "\n" not in message
    assert (tmp_path / "prepared" / "train_images.npy").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared")]


def test_bad_images_skip_counts_names_and_leaves_them_out(tmp_path, fashion, capsys):
    root = folder_of(tmp_path, fashion)
    victims = sorted(root.glob("*/*.png"))[::9][:7]  # spread over the classes
    for victim in victims:
        damage(victim)
    (victims[0].parent / "notes.txt").write_text("not an image")  # ignored, not an error
    (victims[0].parent / "fake.jpg").write_text("not an image either")
    meta, prepared, lines = prepare(tmp_path, data_params(tmp_path, source=str(root), bad_images="skip"))
    assert meta["skipped_images"] == 8
    said = capsys.readouterr().out
    assert f"{root}: ignored 1 file (.txt) outside the class folders or not images (images are .jpg" in said
    assert sum(meta["counts"].values()) == 60 - 7
    skipped = [line for line in lines if line.startswith("skipped 8 unreadable images")]
    assert skipped and str(victims[0]) in skipped[0] and skipped[0].count(str(root)) == 5
    for split in ("train", "val", "test"):  # the shortened .npy files are whole and consistent
        assert len(prepared[f"{split}_images"]) == len(prepared[f"{split}_labels"]) == meta["counts"][split]


def test_a_full_disk_names_the_prepared_file_and_keeps_the_old_folder(tmp_path, fashion, monkeypatch):
    import errno

    from cnnspec.errors import DiskFullError

    root = folder_of(tmp_path, fashion)
    data = data_params(tmp_path, source=str(root))
    prepare(tmp_path, data)
    before = (tmp_path / "prepared" / "meta.json").read_bytes()

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(imagesets.os, "pwrite", no_space)
    with pytest.raises(DiskFullError, match=r"prepared/train_images\.npy: no space left on device"):
        prepare(tmp_path, data)
    assert (tmp_path / "prepared" / "meta.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared")]


def test_a_class_folder_of_photos_in_a_format_not_read_says_which(tmp_path, fashion, capsys):
    root = folder_of(tmp_path, fashion)
    (root / "Zebra").mkdir()
    for name in ("IMG_1.HEIC", "IMG_2.heic", "notes"):
        (root / "Zebra" / name).write_bytes(b"not read")
    with pytest.raises(DataError, match=r"Zebra: empty class folder \(no .*files, only 3 files \(.heic, no suffix\)\)"):
        listing.scan_folder(root)


def test_empty_class_folder_is_named(tmp_path, fashion):
    root = folder_of(tmp_path, fashion)
    (root / "Zebra").mkdir()
    with pytest.raises(DataError, match=r"Zebra: empty class folder"):
        prepare(tmp_path, data_params(tmp_path, source=str(root)))


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_csv_row_naming_a_missing_file(tmp_path, fashion, policy):
    root = folder_of(tmp_path, fashion)
    rows = [{"path": str(p.relative_to(tmp_path)), "label": p.parent.name} for p in sorted(root.glob("*/*.png"))]
    rows[4]["path"] = "images/nowhere/missing.png"
    data = data_params(tmp_path, dataset="csv", source=str(write_csv(tmp_path / "list.csv", rows)),
                       bad_images=policy)
    if policy == "fail":
        with pytest.raises(ImageReadError, match=r"list\.csv:6: images/nowhere/missing\.png: no such image file"):
            prepare(tmp_path, data)
    else:
        meta, _, lines = prepare(tmp_path, data)
        assert meta["skipped_images"] == 1 and sum(meta["counts"].values()) == 59
        assert any("list.csv:6: images/nowhere/missing.png" in line for line in lines)


def test_a_label_only_in_test_is_refused(tmp_path, fashion):
    root = tmp_path / "images"
    write_image_folder(root, fashion[0][:40], fashion[1][:40], ".png", split="train")
    write_image_folder(root, fashion[2][:10], fashion[3][:10], ".png", split="test")
    only_test = root / "test" / "Unicorn"
    only_test.mkdir()
    (only_test / "1.png").write_bytes(next(root.glob("train/*/*.png")).read_bytes())
    with pytest.raises(DataError, match=r"class 'Unicorn' has images in test but none in train"):
        prepare(tmp_path, data_params(tmp_path, source=str(root)))


def test_duplicate_csv_paths_name_both_lines(tmp_path, fashion):
    root = folder_of(tmp_path, fashion)
    rows = [{"path": str(p.relative_to(tmp_path)), "label": p.parent.name} for p in sorted(root.glob("*/*.png"))]
    rows.append({"path": "./" + rows[2]["path"], "label": "other"})
    data = data_params(tmp_path, dataset="csv", source=str(write_csv(tmp_path / "list.csv", rows)))
    with pytest.raises(DataError, match=r"list\.csv:62: \./images/.*: duplicate path, first listed on line 4"):
        prepare(tmp_path, data)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked_folder"])
def test_paths_escaping_the_source_are_refused(tmp_path, fashion, how):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.png"
    secret.write_bytes(b"\x89PNG not really")
    root = tmp_path / "source"
    write_image_folder(root, fashion[0][:20], fashion[1][:20], ".png")
    if how in ("symlink", "symlinked_folder"):
        target, link = (secret, root / "Bag" / "link.png") if how == "symlink" else (outside, root / "Bag" / "more")
        (root / "Bag").mkdir(exist_ok=True)
        os.symlink(target, link)
        data = data_params(tmp_path, source=str(root))
    else:
        rows = [{"path": str(p.relative_to(root)), "label": p.parent.name} for p in sorted(root.glob("*/*.png"))]
        rows[1]["path"] = "../outside/secret.png" if how == "dotdot" else str(secret)
        data = data_params(tmp_path, dataset="csv", source=str(write_csv(root / "list.csv", rows)))
    with pytest.raises(DataError, match=r"outside data.source|absolute path"):
        prepare(tmp_path, data)
    assert not (tmp_path / "prepared").exists()


def test_empty_dataset_and_single_class_are_refused(tmp_path, fashion):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no class subfolders"):
        prepare(tmp_path, data_params(tmp_path, source=str(empty)))
    header_only = tmp_path / "header.csv"
    header_only.write_text("path,label\n")
    with pytest.raises(DataError, match=r"no images found \(empty dataset\)"):
        prepare(tmp_path, data_params(tmp_path, dataset="csv", source=str(header_only)))
    one = tmp_path / "one"
    write_image_folder(one, fashion[0][:10], np.zeros(10, dtype=np.int64), ".png")
    with pytest.raises(DataError, match=r"only one class \('T-shirt-top'\)"):
        prepare(tmp_path, data_params(tmp_path, source=str(one)))


def test_a_source_one_folder_above_the_class_folders_suggests_the_one_below(tmp_path, fashion):
    wrap = tmp_path / "wrap"
    write_image_folder(wrap / "photos", fashion[0][:60], fashion[1][:60], ".png")
    classes = sorted(p.name for p in (wrap / "photos").iterdir())
    with pytest.raises(DataError) as caught:
        prepare(tmp_path, data_params(tmp_path, source=str(wrap)))
    assert str(caught.value) == (f"data.source: only one class ('photos'), a folder holding only folders "
                                 f"({', '.join(classes[:3])}, ...); if those are the classes, "
                                 f"set data.source={wrap / 'photos'}")
    meta, _, _ = prepare(tmp_path, data_params(tmp_path, source=str(wrap / "photos")))
    assert meta["classes"] == classes


def test_csv_without_the_named_column_names_the_param(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("file,label\na.png,x\n")
    with pytest.raises(DataError, match=r"list\.csv:1: no column 'path' \(data\.csv\.path_column\)"):
        prepare(tmp_path, data_params(tmp_path, dataset="csv", source=str(manifest)))


@pytest.mark.parametrize("header, columns, hint", [
    ("filename,class", {}, "; to read it: -S data.csv.path_column=filename -S data.csv.label_column=class"),
    ("Image,Label", {}, "; to read it: -S data.csv.path_column=Image -S data.csv.label_column=Label"),
    ("path,Category", {}, "; to read it: -S data.csv.label_column=Category"),
    ("file,label", {"path_column": "image"}, "; to read it: -S data.csv.path_column=file"),
    ("a,b", {}, ""),  # nothing to guess from: the header is listed, no -S
])
def test_csv_with_other_column_names_says_what_to_set(tmp_path, header, columns, hint):
    """A Kaggle manifest is `filename,class` or `image_id,label`: the first error names the
    settings that read it, all of them, instead of one round trip per column."""
    manifest = tmp_path / "list.csv"
    manifest.write_text(header + "\na.png,x\n")
    data = data_params(tmp_path, dataset="csv", source=str(manifest))
    data["csv"] = {**data["csv"], **columns}
    with pytest.raises(DataError) as caught:
        prepare(tmp_path, data)
    assert str(caught.value).endswith(f"the header has: {header.replace(',', ', ')}{hint}")


def test_windows_backslash_paths_in_a_csv_are_named_with_the_path_that_exists(tmp_path, fashion):
    root = folder_of(tmp_path, fashion, suffix=".jpg")
    rows = [{"path": str(p.relative_to(tmp_path)).replace("/", "\\"), "label": p.parent.name}
            for p in sorted(root.glob("*/*.jpg"))]
    manifest = write_csv(tmp_path / "list.csv", rows)
    first = rows[0]["path"].replace("\\", "/")
    with pytest.raises(DataError) as caught:
        prepare(tmp_path, data_params(tmp_path, dataset="csv", source=str(manifest)))
    assert str(caught.value) == (f"{manifest}:2: {rows[0]['path']}: no such file, but there is {first}: write "
                                 "the CSV's paths with / (a \\ is part of a file name here, not a folder separator)")


def manifest_by_hand(tmp_path, root, header: str, row: str) -> Path:
    """list.csv as a person might type it: `row` formatted with each image's path and class."""
    manifest = tmp_path / "list.csv"
    manifest.write_text(header + "".join(row.format(path=p.relative_to(tmp_path), label=p.parent.name)
                                         for p in sorted(root.glob("*/*.png"))))
    return manifest


def test_a_csv_header_written_with_comma_space_says_so(tmp_path, fashion):
    manifest = manifest_by_hand(tmp_path, folder_of(tmp_path, fashion), "path, label\n", "{path}, {label}\n")
    with pytest.raises(DataError) as caught:
        prepare(tmp_path, data_params(tmp_path, dataset="csv", source=str(manifest)))
    assert str(caught.value) == (f"{manifest}:1: no column 'label' (data.csv.label_column); the header has: "
                                 "path,  label; the header's names have spaces around them (' label'): "
                                 "write the header with a bare comma between names")


@pytest.mark.parametrize("row, fields", [(",,extra", 3), ("images/a.png,Bag,b,c", 4)])
def test_a_csv_row_with_more_fields_than_the_header_names_its_line(tmp_path, row, fields):
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"path,label\nimages/b.png,Coat\n{row}\n")
    with pytest.raises(DataError) as caught:
        prepare(tmp_path, data_params(tmp_path, dataset="csv", source=str(manifest)))
    assert str(caught.value) == (f"{manifest}:3: {fields} fields, but the header has 2; "
                                 "quote a value that holds a comma")


def test_a_spreadsheets_trailing_comma_is_no_extra_field(tmp_path, fashion):
    root = folder_of(tmp_path, fashion)
    manifest = manifest_by_hand(tmp_path, root, "path,label\n", "{path},{label},\n")
    meta, _, _ = prepare(tmp_path, data_params(tmp_path, dataset="csv", source=str(manifest)))
    assert sum(meta["counts"].values()) == len(list(root.glob("*/*.png")))


@pytest.mark.parametrize("renamed", ["class folder", "image file"])
def test_a_folder_name_that_is_not_utf8_is_refused_naming_it(tmp_path, fashion, renamed):
    root = folder_of(tmp_path, fashion)
    if renamed == "class folder":
        os.rename(bytes(root / "Bag"), bytes(root) + b"/B\xe9g")
        expected = f"{root}/B\\xe9g: the name is not valid UTF-8 text; rename it"
    else:
        image = sorted((root / "Bag").iterdir())[0]
        os.rename(bytes(image), bytes(root) + b"/Bag/\xff.png")
        expected = f"{root}/Bag/\\xff.png: the name is not valid UTF-8 text; rename it"
    with pytest.raises(DataError) as caught:
        prepare(tmp_path, data_params(tmp_path, source=str(root)))
    message = str(caught.value)
    assert message.startswith(expected) and message.isprintable() and message.encode("utf-8")
    assert not (tmp_path / "prepared").exists()


def test_a_csv_in_a_folder_whose_name_is_not_utf8_is_refused_naming_it(tmp_path, fashion):
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/lists-\xe9"))
    root = folder_of(folder, fashion)
    rows = [{"path": str(p.relative_to(folder)), "label": p.parent.name} for p in sorted(root.glob("*/*.png"))]
    manifest = write_csv(folder / "list.csv", rows)
    with pytest.raises(DataError, match=r"lists-\\xe9: the name is not valid UTF-8 text; rename it"):
        prepare(tmp_path, data_params(tmp_path, dataset="csv", source=str(manifest)))
    assert not (tmp_path / "prepared").exists()


# ---------------------------------------------------------------- params and the stage

@pytest.mark.parametrize("change, message", [
    ({"channels": 2}, "data.channels: 2 is not one of: auto, 1, 3"),
    ({"image_size": "big"}, "data.image_size: 'big' is not auto or [height, width]"),
    ({"image_size": [32]}, "data.image_size: a list of 1 is too short"),
    # one side, as Keras' and torchvision's sizes are often written, and a size as text
    ({"image_size": 32}, "data.image_size: 32 is not auto or [height, width] (write [32, 32] for 32x32)"),
    ({"image_size": "64x48"}, "data.image_size: '64x48' is not auto or [height, width] (write [64, 48])"),
    ({"resize": "crop"}, "data.resize: 'crop' is not one of: stretch, center_crop"),
    ({"bad_images": "ignore"}, "data.bad_images: 'ignore' is not one of: fail, skip"),
    ({"csv": {"path_colum": "p"}}, "data.csv.path_colum: unknown key 'path_colum' (did you mean 'path_column'?)"),
])
def test_bad_data_params_name_the_key(tmp_path, change, message):
    from cnnspec.errors import ParamsError

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"].update(change)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as error:
        load_params(tmp_path / "params.yaml", ["data"])
    assert message in str(error.value)


def run_stage(cwd, name):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, str(REPO_ROOT / "stages" / f"{name}.py")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_missing_source_is_named_by_its_key(tmp_path):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"].update(dataset="csv", source="data/labels.csv")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage(tmp_path, "preprocess")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: params.yaml: data.source: data/labels.csv: no such file"
    assert not (tmp_path / "data").exists()


def test_stages_on_a_folder_dataset_and_a_bad_image(tmp_path, fashion):
    folder_of(tmp_path, fashion)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"].update(dataset="folder", source="images", image_size=[28, 28], channels=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    download = run_stage(tmp_path, "download")
    assert download.returncode == 0 and "nothing to download" in download.stdout
    assert (tmp_path / "data" / "raw" / "README.txt").is_file()
    done = run_stage(tmp_path, "preprocess")
    assert done.returncode == 0, done.stderr
    assert "images per class: Ankle boot" in done.stdout
    damage(sorted((tmp_path / "images").glob("*/*.png"))[0])
    failed = run_stage(tmp_path, "preprocess")
    errors = [line for line in failed.stderr.splitlines() if not line.startswith("warning: ")]
    assert failed.returncode == 1 and len(errors) == 1, failed.stderr  # (48 images: val_split 0.02 gives none)
    assert "images/" in errors[0] and "damaged or unreadable image" in errors[0]


def test_training_data_streams_from_the_memory_map(tmp_path, fashion):
    import torch

    from cnnspec.training.device import DeviceData

    root = folder_of(tmp_path, fashion)
    prepare(tmp_path, data_params(tmp_path, source=str(root)))
    mapped = load_prepared(tmp_path / "prepared", mmap_mode="c")
    loaded = load_prepared(tmp_path / "prepared")
    streamed, resident = DeviceData(mapped, torch.device("cpu")), DeviceData(loaded, torch.device("cpu"))
    address = mapped["train_images"].ctypes.data
    assert streamed.train_images.data_ptr() == address  # no copy of the file in memory
    indices = torch.tensor([5, 0, 17, 3])
    assert torch.equal(streamed.batch(streamed.train_images, indices),
                       resident.batch(resident.train_images, indices))


@pytest.mark.slow
def test_the_preparation_benchmark_prints_its_figures(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_prepare_folder.py"),
                             "--sizes", "300", "600", "--workdir", str(tmp_path), "--workers", "2"],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if " images: " in line]
    assert [row.split()[0] for row in rows] == ["300", "600"]
    assert all("images/s" in row and "stage peak RSS" in row and "target <" in row for row in rows)
    assert len(list((tmp_path / "jpegs_300").glob("class_*/*.jpg"))) == 300
