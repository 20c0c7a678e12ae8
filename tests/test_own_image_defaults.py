"""Defaults that fit the images a user brings, and the lines that say what was chosen:
the batch fitted to the training set, model.spec auto, image size and channels auto,
class order, resize notes, a source outside the repository, built-ins that ignore a
leftover data.source, and a params.yaml that `dvc exp run -S` changes by one line."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cnnspec.data.image_sample import auto_channels, auto_image_size, resize_note, sample_images
from cnnspec.data.listing import assign_splits, class_order, scan_folder
from cnnspec.data.user_datasets import prepare_image_dataset
from cnnspec.errors import DataError
from cnnspec.pipeline.fit import MIN_STEPS, fit_batch_size, fit_to_data
from cnnspec.pipeline.params import load_params

REPO_ROOT = Path(__file__).resolve().parent.parent


def folder_params() -> str:
    """params.yaml as committed, with data.dataset: folder."""
    return (REPO_ROOT / "params.yaml").read_text().replace("  dataset: cifar10 ", "  dataset: folder  ")


def resolve_folder(tmp_path, meta: dict | None, params_text: str | None = None) -> tuple[dict, list[str]]:
    """The resolve stage on `params_text` (default: folder_params()) and a prepared meta.json
    holding `meta` (None: tmp_path/prepared is used as it is): (resolved params, lines said)."""
    from stages.resolve import resolve

    (tmp_path / "params.yaml").write_text(params_text or folder_params())
    prepared = tmp_path / "prepared"
    if meta is not None:
        prepared.mkdir(exist_ok=True)
        (prepared / "meta.json").write_text(json.dumps(meta))
    said = []
    resolved = resolve(tmp_path / "params.yaml", tmp_path / "params.resolved.yaml", prepared, log=said.append)
    return resolved, said


# --- the batch size ----------------------------------------------------------

def test_a_recipe_batch_too_large_for_the_training_set_is_capped():
    fit = fit_batch_size(1024, 1408, set_by_user=False)  # airbench's batch on 1,408 images
    assert fit.batch_size == 1408 // MIN_STEPS == 70 and fit.capped_from == 1024
    assert fit.steps(1408) == 20 and fit.warnings == []


def test_a_batch_that_fits_is_kept_and_a_users_batch_is_never_changed():
    assert fit_batch_size(64, 50_000, set_by_user=False).batch_size == 64
    fit = fit_batch_size(1024, 1408, set_by_user=True)
    assert fit.batch_size == 1024 and fit.capped_from is None
    assert any("1 step an epoch" in warning for warning in fit.warnings), fit.warnings
    assert any("leaves 384 images (27%) out of every epoch" in warning for warning in fit.warnings), fit.warnings
    assert all("-S train.batch_size=70" in warning for warning in fit.warnings)


def test_the_warnings_group_counts_by_thousands_as_the_resolve_line_does():
    fit = fit_batch_size(5000, 12_000, set_by_user=True)
    assert any("train.batch_size 5000 on 12,000 training images is 2 steps an epoch" in warning
               for warning in fit.warnings), fit.warnings
    assert any("leaves 2,000 images (17%) out of every epoch" in warning for warning in fit.warnings), fit.warnings
    assert fit_batch_size(5000, 4_500, set_by_user=True).warnings[0].startswith(
        "warning: train.batch_size 5000 is more than the 4,500 training images")


def test_a_batch_larger_than_the_training_set_is_recorded_as_the_one_batch_training_takes():
    fit = fit_batch_size(512, 300, set_by_user=True)
    assert fit.batch_size == 300  # what the training loop takes: all 300 as one batch
    assert fit.warnings == ["warning: train.batch_size 512 is more than the 300 training images: each epoch "
                            "is one step on all of them, too few to learn much; -S train.batch_size=15"]


def test_train_and_resolve_fit_the_same_way(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  batch_size:\n")
    assert fit_to_data({"batch_size": 1024, "epochs": 3}, 1408, params) == {"batch_size": 70, "epochs": 3}
    params.write_text("train:\n  batch_size: 1024\n")
    assert fit_to_data({"batch_size": 1024}, 1408, params)["batch_size"] == 1024


# --- model.spec: auto ------------------------------------------------------------

@pytest.mark.parametrize("dataset, spec, recipe", [("folder", "specs/small_images.yaml", "small_images"),
                                                   ("csv", "specs/small_images.yaml", "small_images"),
                                                   ("cifar10", "specs/speedrun94.yaml", "airbench")])
def test_model_spec_auto_picks_by_dataset_and_brings_its_recipe(tmp_path, monkeypatch, dataset, spec, recipe):
    monkeypatch.chdir(REPO_ROOT)
    path = tmp_path / "params.yaml"
    path.write_text(f"recipe: auto\ndata: {{dataset: {dataset}}}\nmodel: {{spec: auto}}\n")
    params = load_params(path, sections=["recipe", "model", "train"])
    assert params["model"]["spec"] == spec and params["recipe"] == recipe


def test_the_resolve_stage_says_what_it_chose_and_why(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    resolved, said = resolve_folder(tmp_path, {"counts": {"train": 1408}, "input_shape": [1, 8, 8]})
    assert resolved["train"]["batch_size"] == 64  # the recipe's 64 already gives 22 steps
    assert said == ["spec specs/small_images.yaml (model.spec: auto, for your own images (data.dataset: folder)), "
                    "recipe small_images (recipe: auto, the one the spec names); batch 64: 22 steps an epoch "
                    "on 1,408 training images of 1x8x8"]
    written = yaml.safe_load((tmp_path / "params.resolved.yaml").read_text())
    assert len(written["model"]["spec_sha256"]) == 64


def test_a_capped_default_batch_is_called_the_default_with_its_steps(tmp_path, monkeypatch):
    """With recipe: none the batch comes from the schema's defaults, not from a recipe."""
    monkeypatch.chdir(REPO_ROOT)
    resolved, said = resolve_folder(tmp_path, {"counts": {"train": 900}, "input_shape": [1, 8, 8]},
                                    folder_params().replace("\nrecipe: auto", "\nrecipe: none", 1))
    assert resolved["recipe"] == "none" and resolved["train"]["batch_size"] == 900 // MIN_STEPS
    assert said[0].endswith("batch 45: 20 steps an epoch on 900 training images of 1x8x8 (the default batch "
                            "1024 would give 0 steps; capped for at least 20)")


def test_a_dozen_photos_are_not_said_to_give_twenty_steps(tmp_path, monkeypatch):
    """A first try on a dozen photos: the batch is capped to 1 and an epoch still has fewer
    than 20 steps; the line said "capped for at least 20" beside "10 steps"."""
    monkeypatch.chdir(REPO_ROOT)
    _, said = resolve_folder(tmp_path, {"counts": {"train": 10}, "input_shape": [3, 28, 28], "classes": ["cat", "dog"]})
    assert said[0].endswith("batch 1: 10 steps an epoch on 10 training images of 3x28x28 (the recipe's batch 64 "
                            "would give 0 steps; capped to one image a step, still short of the 20 steps "
                            "aimed at: more images help)")


def test_the_resolve_line_groups_the_training_images_by_thousands(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    _, said = resolve_folder(tmp_path, {"counts": {"train": 58800}, "input_shape": [1, 8, 8]},
                             folder_params().replace("\nrecipe: auto", "\nrecipe: none", 1))
    assert said[0].endswith("batch 1024: 57 steps an epoch on 58,800 training images of 1x8x8")  # as preprocess says


def test_resolve_notes_uneven_classes_only_while_nothing_weighs_them(tmp_path, monkeypatch):
    """Fashion-MNIST as files, one class with 8 images against 60 for each of the others."""
    from tests.imagefiles import fashion_subset, write_image_folder

    images, labels, _, _ = fashion_subset(2000, 0)
    keep = np.concatenate([np.flatnonzero(labels == label)[:8 if label == 9 else 60] for label in range(4, 10)])
    write_image_folder(tmp_path / "clothes", images[keep], labels[keep])
    data = {"dataset": "folder", "source": str(tmp_path / "clothes"), "val_split": "auto", "test_split": 0.2,
            "seed": 0, "image_size": "auto", "channels": "auto", "resize": "stretch", "bad_images": "fail",
            "csv": {}, "classes": []}
    prepare_image_dataset(data, tmp_path / "prepared", workers=1, log=lambda line: None)
    monkeypatch.chdir(REPO_ROOT)
    notes = {}
    for mode in ("", "balanced"):  # params.yaml's empty mode: the recipe's, none
        _, said = resolve_folder(tmp_path, None, folder_params().replace(
            "    mode:                 # none | balanced", f"    mode: {mode}  # none | balanced"))
        assert said[0].startswith("spec specs/small_images.yaml")
        notes[mode] = [line for line in said if "uneven" in line]
    assert notes["balanced"] == []
    assert len(notes[""]) == 1 and notes[""][0].startswith(
        "note: the training classes are uneven: 'Ankle boot' has ")
    assert notes[""][0].endswith("-S train.class_weights.mode=balanced weighs each class's loss by its rarity")


def _labels_fifo(path):
    os.mkfifo(path)


def _labels_with_a_negative_shape(path):
    header = repr({"descr": "<i8", "fortran_order": False, "shape": (-100,)}).encode().ljust(117) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("meta, labels", [
    ({"counts": {"train": "1408"}}, None),
    ({"counts": {"train": [1408]}}, None),
    ({"input_shape": 5}, None),
    ({"input_shape": ["a", "b", "c"]}, None),
    ({"input_shape": [1, -8, 0]}, None),
    ({}, _labels_fifo),
    ({}, lambda path: np.save(path, np.array([0, 1, 2, 10**12]))),
    ({}, _labels_with_a_negative_shape),
], ids=["count-text", "count-list", "shape-number", "shape-text", "shape-negative",
        "labels-fifo", "label-10-to-the-12", "labels-negative-shape"])
def test_resolve_takes_a_damaged_meta_json_or_train_labels_as_absent(tmp_path, monkeypatch, meta, labels):
    """meta.json and train_labels.npy come from someone's DVC cache. Values of another type were
    a traceback, a FIFO hung the stage, and a label of 10**12 had bincount ask for 8 TB: resolve
    now writes its file without them, and the train stage names what is wrong."""
    monkeypatch.chdir(REPO_ROOT)
    (tmp_path / "prepared").mkdir()
    if labels is not None:
        labels(tmp_path / "prepared" / "train_labels.npy")
    whole = {"counts": {"train": 1408}, "input_shape": [1, 8, 8], "classes": ["a", "b", "c"]}
    _, said = resolve_folder(tmp_path, {**whole, **meta})
    assert said[0].startswith("spec specs/small_images.yaml") and "\n" not in said[0]
    assert (tmp_path / "params.resolved.yaml").is_file() and not any("uneven" in line for line in said)


def test_resolve_says_when_a_spec_declares_another_input_and_names_no_recipe(tmp_path, monkeypatch):
    """A spec written for 3x32x32 trained on 1x8x8 images: the model is built for the
    images (its parameter count is not the summary's), and auto's recipe is the default."""
    monkeypatch.chdir(REPO_ROOT)
    spec = tmp_path / "plain.yaml"
    spec.write_text("name: plain\ninput: {channels: 3, height: 32, width: 32}\nlayers:\n"
                    "  - conv: 8\n  - global_avg_pool\n  - dense: num_classes\n")
    meta = {"counts": {"train": 1408}, "input_shape": [1, 8, 8], "classes": ["a", "b", "c"]}
    _, said = resolve_folder(tmp_path, meta, folder_params().replace("  spec: auto ", f"  spec: {spec} "))
    assert said[0].startswith(f"spec {spec} (model.spec), recipe keras_adam (recipe: auto; the spec names "
                              "none, so the default)")
    assert f"note: {spec} declares input 3x32x32, the prepared images are 1x8x8: the model is built for the " \
           f"images (cnnspec summary {spec} --input 1x8x8 --classes 3 shows it)" in said


# --- image size, channels, class order ---------------------------------------------

def write_images(root: Path, sizes, mode="L", classes=("eight", "five", "nine")):
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate(sizes):
        folder = root / classes[index % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        shape = (height, width) if mode == "L" else (height, width, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{index:03d}.png")
    return root


def test_auto_keeps_tiny_grayscale_images_as_they_are(tmp_path):
    listing = scan_folder(write_images(tmp_path / "digits", [(8, 8)] * 30))
    sample = sample_images(listing.paths)
    assert auto_image_size(sample) == [8, 8] and auto_channels(sample) == 1
    assert resize_note(sample, (8, 8), "stretch", auto=True) == "images 8x8 (data.image_size: auto): not resized"
    assert resize_note(sample, (32, 32), "stretch") == "images 8x8 -> 32x32 (data.image_size; data.resize: stretch)"


def test_auto_scales_large_mixed_colour_images_down_to_fit_64(tmp_path):
    listing = scan_folder(write_images(tmp_path / "photos", [(300, 400)] * 5 + [(120, 90)], mode="RGB"))
    sample = sample_images(listing.paths)
    assert auto_image_size(sample) == [48, 64] and auto_channels(sample) == 3
    assert resize_note(sample, (48, 64), "center_crop", auto=True) == \
        "images 2 sizes, 120x90 to 300x400 (by area) -> 48x64 (data.image_size: auto; data.resize: center_crop)"


def test_data_classes_sets_the_label_order_and_must_name_every_class(tmp_path):
    assert class_order({"eight", "five", "nine"}, []) == ["eight", "five", "nine"]  # alphabetical
    assert class_order({"eight", "five", "nine"}, ["five", "eight", "nine"]) == ["five", "eight", "nine"]
    for asked, words in [(["five", "eight"], "leaves out 'nine'"), (["five", "eight", "nine", "ten"], "'ten' is not"),
                         (["five", "five", "eight", "nine"], "'five' is listed twice")]:
        with pytest.raises(DataError, match=words):
            class_order({"eight", "five", "nine"}, asked)
    listing = scan_folder(write_images(tmp_path / "digits", [(8, 8)] * 30))
    classes, splits = assign_splits(listing, 0.0, 0.2, 0, ["five", "eight", "nine"])
    assert classes == ["five", "eight", "nine"]
    first = listing.labels[splits["train"][0][0]]
    assert classes[splits["train"][1][0]] == first


def test_an_image_size_that_blows_every_image_up_is_noted_with_its_cost(tmp_path):
    from cnnspec.data.image_sample import enlarge_note
    from tests.imagefiles import fashion_subset, write_image_folder

    images, labels, _, _ = fashion_subset(30, 0)
    write_image_folder(tmp_path / "clothes", images, labels)
    sample = sample_images(scan_folder(tmp_path / "clothes").paths)
    assert enlarge_note(sample, (280, 280), 30, 1) == (
        "note: data.image_size 280x280 enlarges even the largest images sampled (28x28) 10x a side: no detail "
        "is added, and the prepared images take 0.0 GB; data.image_size: auto keeps their own size")
    assert enlarge_note(sample, (1000, 1000), 1_200, 1).split("take ")[1].startswith("1.2 GB")
    assert enlarge_note(sample, (48, 48), 30, 1) is None  # under twice a side: upscaling a little is common


def test_class_names_holding_a_comma_are_quoted_in_lists():
    """Fashion-MNIST's 'T-shirt, top' would read as two classes in a bare list."""
    with pytest.raises(DataError) as caught:
        class_order({"T-shirt, top", "bag"}, ["coat"])
    assert caught.value.args[0].endswith("(found: 'T-shirt, top', bag)")


def test_prepared_data_keeps_each_splits_file_list(tmp_path):
    source = write_images(tmp_path / "digits", [(8, 8)] * 30)
    data = {"dataset": "folder", "source": str(source), "val_split": 0.1, "test_split": 0.2, "seed": 0,
            "image_size": "auto", "channels": "auto", "resize": "stretch", "bad_images": "fail",
            "csv": {}, "classes": ["nine", "five", "eight"]}
    said = []
    meta = prepare_image_dataset(data, tmp_path / "prepared", workers=1, log=said.append)
    assert meta["input_shape"] == [1, 8, 8] and meta["classes"] == ["nine", "five", "eight"]
    assert "images 8x8 (data.image_size: auto): not resized" in said
    files = json.loads((tmp_path / "prepared" / "files.json").read_text())
    for split in ("train", "val", "test"):
        labels = np.load(tmp_path / "prepared" / f"{split}_labels.npy")
        assert len(files[split]) == len(labels) == meta["counts"][split]
        assert [meta["classes"][label] for label in labels] == [name.split("/")[0] for name in files[split]]


# --- data.val_split: auto ------------------------------------------------------------

@pytest.mark.parametrize("training_images, fraction", [
    (50_000, 0.02), (60_000, 0.02), (200_000, 0.02),   # the built-ins keep CIFAR's 2%
    (10_000, 0.1), (7_000, 0.14), (325, 0.2), (12, 0.2)])
def test_val_split_auto_holds_out_about_a_thousand_images_between_2_and_20_percent(training_images, fraction, capsys):
    from cnnspec.data.datasets import val_fraction

    assert val_fraction("auto", training_images) == fraction
    # says what the fraction is for, and that 1,000 is the aim, not what was held out
    assert capsys.readouterr().out == (f"data.val_split auto: {fraction:g} of {training_images:,} training images "
                                       "held out for validation (auto aims at 1,000 images, within 2% to 20%)\n")
    assert val_fraction(0.05, training_images) == 0.05 and capsys.readouterr().out == ""  # a number as written


def test_val_split_auto_gives_a_few_hundred_own_images_a_validation_set_to_steer_by(tmp_path):
    """400 Fashion-MNIST images as files: CIFAR's 2% would leave 6 validation images (none
    for most classes); auto holds out a fifth of what test leaves, from every class."""
    from tests.imagefiles import fashion_subset, write_image_folder

    images, labels, _, _ = fashion_subset(400, 0)
    write_image_folder(tmp_path / "clothes", images, labels)
    data = {"dataset": "folder", "source": str(tmp_path / "clothes"), "val_split": "auto", "test_split": 0.2,
            "seed": 0, "image_size": "auto", "channels": "auto", "resize": "stretch", "bad_images": "fail",
            "csv": {}, "classes": []}
    meta = prepare_image_dataset(data, tmp_path / "prepared", workers=1, log=lambda line: None)
    counts = meta["counts"]
    assert counts["test"] == 80 and counts["val"] == pytest.approx(0.2 * 320, abs=len(meta["classes"]))
    val_labels = np.load(tmp_path / "prepared" / "val_labels.npy")
    assert set(val_labels.tolist()) == set(range(len(meta["classes"])))  # every class has val images


def test_params_yaml_ships_val_split_auto():
    assert load_params(REPO_ROOT / "params.yaml")["data"]["val_split"] == "auto"


# --- data.source: outside the repository, or left over -------------------------------

def test_a_source_outside_the_repository_is_named_as_unversioned(tmp_path, monkeypatch):
    from stages.preprocess import unversioned_source_note

    monkeypatch.chdir(REPO_ROOT)
    note = unversioned_source_note(tmp_path / "images")
    assert note.startswith(f"note: data.source {tmp_path / 'images'} is outside the repository")
    assert "dvc add" in note and "dvc import" in note
    assert unversioned_source_note(Path("data/my_images")) is None
    assert unversioned_source_note(REPO_ROOT / "data" / "my_images") is None


def test_images_neither_dvc_added_nor_in_git_are_warned_about(tmp_path, monkeypatch):
    """Skipping the README's `dvc add` line trains all the same, but `dvc exp run` then puts
    every untracked image into the experiment's git commit: .git swells with the photos."""
    import subprocess

    from stages.preprocess import untracked_source_warning

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "my_images" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "my_images" / "cat" / "1.png").write_bytes(b"png")
    (tmp_path / "data" / "my_images" / "labels.csv").write_text("path,label\ncat/1.png,cat\n")
    assert untracked_source_warning(Path("data/my_images"), "folder") is None  # not a git repository
    subprocess.run(["git", "init", "-q"], check=True)
    warning = untracked_source_warning(Path("data/my_images"), "folder")
    assert warning.startswith("warning: data/my_images is neither `dvc add`ed nor committed to git: ")
    assert warning.endswith("run `dvc add data/my_images` and commit data/my_images.dvc first "
                            "(README, Train on your own images)")
    assert untracked_source_warning(Path("data/my_images/labels.csv"), "csv") == warning
    (tmp_path / "data" / ".gitignore").write_text("/my_images\n")  # what `dvc add data/my_images` writes
    assert untracked_source_warning(Path("data/my_images"), "folder") is None
    assert untracked_source_warning(Path("data/my_images/labels.csv"), "csv") is None
    (tmp_path / "data" / ".gitignore").unlink()
    subprocess.run(["git", "add", "data/my_images"], check=True)  # a small set kept in git itself
    assert untracked_source_warning(Path("data/my_images"), "folder") is None


def test_a_built_in_dataset_reads_data_raw_whatever_data_source_says(tmp_path, monkeypatch, capsys):
    from stages import preprocess
    from tests.fakedata import make_mnist_folder

    monkeypatch.chdir(tmp_path)
    make_mnist_folder(tmp_path / "data" / "raw", n_train_per_class=4, n_test_per_class=1)
    (tmp_path / "params.yaml").write_text("data: {dataset: mnist, source: data/my_images.csv, val_split: 0.1,\n"
                                          "       image_size: [32, 32], channels: 3}\n")
    preprocess.main()
    out = capsys.readouterr().out
    assert "data.source (data/my_images.csv) is used by folder and csv datasets only" in out
    assert ("mnist: its images keep their own size and channels; data.image_size [32, 32], data.channels 3 "
            "apply to folder and csv datasets only") in out
    meta = json.loads((tmp_path / "data" / "prepared" / "meta.json").read_text())
    assert meta["dataset"] == "mnist" and meta["input_shape"] == [1, 28, 28]


# --- params.yaml as DVC writes it back --------------------------------------------------

def test_an_experiments_override_changes_one_line_of_params_yaml(tmp_path):
    modify_yaml = pytest.importorskip("dvc.utils.serialize").modify_yaml
    path = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", path)
    before = path.read_text().splitlines()
    with modify_yaml(path) as params:  # what `dvc exp run -S train.batch_size=64` runs
        params["train"]["batch_size"] = 64
    after = path.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after) if old != new]
    assert len(before) == len(after) and len(changed) == 1, changed
    assert changed[0][1].startswith("  batch_size: 64 ")


# --- a spec that cannot take the images ----------------------------------------------

def test_images_too_small_for_the_spec_name_data_image_size_and_the_smallest_size(tmp_path, monkeypatch):
    from cnnspec.errors import ParamsError
    from stages.resolve import resolve

    monkeypatch.chdir(REPO_ROOT)
    params_path = tmp_path / "params.yaml"
    params_path.write_text("recipe: auto\ndata: {dataset: folder, source: data/my_images}\n"
                           "model: {spec: specs/speedrun94.yaml}\n")
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "meta.json").write_text(json.dumps({"counts": {"train": 1000}, "input_shape": [1, 8, 8],
                                                    "classes": [str(i) for i in range(10)]}))
    with pytest.raises(ParamsError) as caught:
        resolve(params_path, tmp_path / "params.resolved.yaml", prepared, log=lambda line: None)
    message = str(caught.value)
    assert message.startswith(f"{params_path}: data.image_size: 8x8 is too small for specs/speedrun94.yaml, "
                              "which takes at least 25x25: -S data.image_size=[25,25]"), message
    assert "\n" not in message and not (tmp_path / "params.resolved.yaml").exists()


# --- the mistakes grid names the files --------------------------------------------------

def test_the_mistakes_grid_titles_each_image_with_its_file_name(tmp_path):
    from stages import plot as plot_stage

    csv_path = tmp_path / "predictions.csv"
    csv_path.write_text("index,actual,predicted,confidence,path\n"
                        "0,cat,dog,0.9000,cat/001.png\n1,dog,dog,0.8000,dog/002.png\n"
                        "2,dog,cat,0.7000,dog/a_very_long_file_name_of_a_photo_0003.png\n")
    paths = plot_stage.read_predictions(csv_path, ["cat", "dog"]).paths
    assert paths == ["cat/001.png", "dog/002.png", "dog/a_very_long_file_name_of_a_photo_0003.png"]
    images = np.zeros((3, 1, 8, 8), np.uint8)
    figure = plot_stage.misclassified_figure(images, np.array([0, 1, 1]), np.array([1, 1, 0]),
                                             ["cat", "dog"], count=9, paths=paths)
    titles = [text.get_text() for text in figure.axes[0].texts]
    assert titles[0] == "001.png\ntrue: cat\npred: dog"
    assert titles[1].startswith("a_very_lon…") and titles[1].split("\n")[0].endswith("0003.png")
    (tmp_path / "plain.csv").write_text("index,actual,predicted\n0,cat,dog\n")
    assert plot_stage.read_predictions(tmp_path / "plain.csv", ["cat", "dog"]).paths is None  # a built-in dataset


def test_the_batch_warnings_never_suggest_the_batch_already_in_use():
    fit = fit_batch_size(1, 4, set_by_user=False)  # 4 images: batch 1 is all there is
    assert fit.batch_size == 1 and len(fit.warnings) == 1
    assert "4 steps an epoch" in fit.warnings[0] and "-S train.batch_size=1" not in fit.warnings[0]
    assert fit.warnings[0].endswith("more images, or more epochs (train.epochs)")
    fit = fit_batch_size(8, 20, set_by_user=True)  # a smaller batch does help here
    assert all(warning.endswith("-S train.batch_size=1") for warning in fit.warnings) and fit.warnings


# --- what decoding did, against what the sample said ----------------------------------

def fashion_photos(root: Path, shapes, count: int = 30, channels: str = "L") -> Path:
    """Real Fashion-MNIST images as JPEGs in class folders, image i resized to shapes[i % len]
    (height, width), in colour (a tint) when `channels` is "RGB"."""
    from tests.imagefiles import class_folder_name, fashion_subset

    images, labels, _, _ = fashion_subset(count, 0)
    for index, (pixels, label) in enumerate(zip(images, labels)):
        height, width = shapes[index % len(shapes)]
        image = Image.fromarray(pixels).resize((width, height))
        if channels == "RGB":
            image = Image.merge("RGB", (image, image.point(lambda v: v // 2), image.point(lambda v: v // 4)))
        folder = root / class_folder_name(label)
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:03d}.jpg", quality=95)
    return root


def own_data(source: Path, **changes) -> dict:
    return {"dataset": "folder", "source": str(source), "val_split": 0.1, "test_split": 0.2, "seed": 0,
            "image_size": "auto", "channels": "auto", "resize": "stretch", "bad_images": "skip",
            "csv": {}, "classes": [], **changes}


def test_photos_of_mixed_orientation_under_stretch_warn_once_and_suggest_center_crop(tmp_path, capsys):
    mixed = fashion_photos(tmp_path / "mixed", [(36, 48), (36, 48), (48, 36)])  # 2/3 landscape, 1/3 portrait
    prepare_image_dataset(own_data(mixed), tmp_path / "prepared", workers=1, log=lambda line: None)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "proportions" in line]
    assert warnings == ["warning: the sampled images mix proportions, 48x36 to 36x48 (height x width): "
                        "data.resize: stretch squeezes every one to 36x48; data.resize: center_crop keeps "
                        "their proportions"]
    prepare_image_dataset(own_data(mixed, resize="center_crop"), tmp_path / "prepared", workers=1,
                          log=lambda line: None)
    same = fashion_photos(tmp_path / "same", [(36, 48), (30, 40)])
    prepare_image_dataset(own_data(same), tmp_path / "prepared", workers=1, log=lambda line: None)
    assert "proportions" not in capsys.readouterr().err


def test_images_beyond_the_sample_that_decoding_resizes_or_turns_gray_are_counted(tmp_path, monkeypatch, capsys):
    import cnnspec.data.user_datasets as imagesets

    source = fashion_photos(tmp_path / "photos", [(28, 28)])
    original = imagesets.sample_images
    monkeypatch.setattr(imagesets, "sample_images", lambda paths: original(paths, 8))
    paths = scan_folder(source).paths
    sampled = {paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, 8).round().astype(int))}
    outside = [path for path in paths if path not in sampled][:3]
    for path in outside:  # colour, and of another size, where the sample saw none
        gray = Image.open(path).convert("L").resize((40, 40))
        Image.merge("RGB", (gray, gray.point(lambda v: v // 2), gray.point(lambda v: v // 4))).save(path)
    said = []
    meta = prepare_image_dataset(own_data(source), tmp_path / "prepared", workers=1, log=said.append)
    assert meta["input_shape"] == [1, 28, 28]
    assert "images 28x28 (data.image_size: auto): not resized" in said  # what the sample showed
    assert "decoding found 3 images not 28x28, unlike the 8 sampled: resized to 28x28 (data.resize: stretch)" in said
    assert ("warning: decoding found 3 colour images, unlike the 8 sampled: read as gray (data.channels: auto "
            "chose 1); set data.channels: 3 to keep their colour") in capsys.readouterr().err.splitlines()
    said.clear()  # with every image as sampled, nothing more is said
    prepare_image_dataset(own_data(fashion_photos(tmp_path / "plain", [(28, 28)])), tmp_path / "prepared",
                          workers=1, log=said.append)
    assert not [line for line in said if line.startswith("decoding found")]
    assert "decoding found" not in capsys.readouterr().err
