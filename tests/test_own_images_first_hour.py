"""What trips a user in the first hour on their own images, on real Fashion-MNIST files:
split folders named as datasets ship them, a colour class the size sample missed, phone
photos stored sideways, skipped files behind an error, a CSV written from the wrong
folder, and warnings whose advice must fit the run."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnspec.data.image_sample import auto_channels, auto_image_size, resize_note, sample_images
from cnnspec.data.images import read_image
from cnnspec.data.listing import scan_csv, scan_folder
from cnnspec.data.user_datasets import prepare_image_dataset
from cnnspec.errors import DataError
from cnnspec.training import learning_check
from tests.imagefiles import FASHION, class_folder_name, fashion_subset, write_csv, write_image_folder

pytestmark = pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")


@pytest.fixture(scope="module")
def fashion():
    train_images, train_labels, test_images, test_labels = fashion_subset(120, 30)
    keep = train_labels < 3, test_labels < 3  # three classes are enough here
    return train_images[keep[0]], train_labels[keep[0]], test_images[keep[1]], test_labels[keep[1]]


def data_params(source, **changes) -> dict:
    return {"dataset": "folder", "source": str(source), "val_split": 0.0, "test_split": 0.2, "seed": 0,
            "image_size": "auto", "channels": "auto", "resize": "stretch", "bad_images": "fail",
            "classes": [], "csv": {"path_column": "path", "label_column": "label", "split_column": ""},
            **changes}


@pytest.mark.parametrize("names", [("train", "valid", "test"), ("Train", "Test"), ("training", "validation"),
                                   ("train", "dev", "testing")])
def test_split_folders_as_datasets_name_them_are_splits_not_classes(fashion, tmp_path, names):
    train_images, train_labels, test_images, test_labels = fashion
    root = tmp_path / "kaggle"
    write_image_folder(root, train_images, train_labels, split=names[0])
    for index, name in enumerate(names[1:]):
        write_image_folder(root, test_images, test_labels, split=name, start=10_000 * (index + 1))
    listing = scan_folder(root)
    assert sorted(set(listing.labels)) == sorted(class_folder_name(label) for label in range(3))
    expected = {"train", *("val" if name.lower() in ("valid", "validation", "dev") else "test" for name in names[1:])}
    assert set(listing.splits) == expected
    assert listing.splits.count("train") == len(train_images)


def test_split_folders_beside_class_folders_or_twice_over_are_errors(fashion, tmp_path):
    train_images, train_labels, test_images, test_labels = fashion
    mixed = tmp_path / "mixed"
    write_image_folder(mixed, train_images, train_labels, split="train")
    write_image_folder(mixed, test_images, test_labels)  # class folders beside train/
    with pytest.raises(DataError, match=r"holds split folders \(train\) beside other folders \(Pullover, T-shirt"):
        scan_folder(mixed)
    twice = tmp_path / "twice"
    write_image_folder(twice, train_images, train_labels, split="train")
    write_image_folder(twice, test_images, test_labels, split="val")
    write_image_folder(twice, test_images, test_labels, split="valid")
    with pytest.raises(DataError, match="val and valid are both the val split; merge them"):
        scan_folder(twice)
    no_train = tmp_path / "no_train"
    write_image_folder(no_train, test_images, test_labels, split="test")
    write_image_folder(no_train, test_images, test_labels, split="valid")
    with pytest.raises(DataError, match=r"holds split folders \(test, valid\) but no train/"):
        scan_folder(no_train)


def test_the_size_and_colour_sample_covers_the_whole_dataset(tmp_path):
    # 80 grey images, then a class of 40 colour ones at another size: a sample of the
    # first files only would call the whole set grey 28x28
    train_images = fashion_subset(120, 1)[0]
    root = tmp_path / "mixed"
    for index, image in enumerate(train_images[:80]):
        (root / "grey").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "grey" / f"{index:03d}.png")
    for index, image in enumerate(train_images[:40]):
        (root / "red").mkdir(parents=True, exist_ok=True)
        colour = np.stack([image, image // 4, image // 4], axis=-1)
        Image.fromarray(colour).resize((96, 96)).save(root / "red" / f"{index:03d}.png")
    sample = sample_images(scan_folder(root).paths)
    assert len(sample) == 120 and auto_channels(sample) == 3
    assert auto_image_size(sample) == [28, 28]  # still the most common size
    assert resize_note(sample, (28, 28), "stretch", auto=True) == \
        "images 2 sizes, 28x28 to 96x96 (by area) -> 28x28 (data.image_size: auto; data.resize: stretch)"


def test_a_photo_stored_sideways_is_read_upright(fashion, tmp_path):
    image = np.zeros((40, 60), np.uint8)  # stored 60 wide, 40 high, a bright left column band
    image[:, :10] = 255
    stored = Image.fromarray(image)
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)
    upright = read_image(path, 1)
    assert upright.shape == (1, 60, 40)  # as viewers show it: portrait
    assert upright[0, :10].mean() > 200 and upright[0, -10:].mean() < 50  # the band is now on top
    assert sample_images([str(path)]) == [(60, 40, "L")]
    plain = tmp_path / "plain.png"  # no EXIF: as stored
    Image.fromarray(fashion[0][0]).save(plain)
    assert np.array_equal(read_image(plain, 1)[0], fashion[0][0])


def test_skipped_images_are_named_before_the_error_they_cause(fashion, tmp_path):
    train_images, train_labels, _, _ = fashion
    root = tmp_path / "data"
    write_image_folder(root, train_images[:30], train_labels[:30])
    broken = root / "Dress"
    broken.mkdir()
    for index in range(3):
        (broken / f"{index}.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    lines = []
    with pytest.raises(DataError, match="class 'Dress' has no readable training image left"):
        prepare_image_dataset(data_params(root, bad_images="skip", test_split=0.1), tmp_path / "prepared",
                              workers=1, log=lines.append)
    skipped = [line for line in lines if line.startswith("skipped 3 unreadable images")]
    assert skipped and "Dress/0.jpg" in skipped[0] and "not an image cnnspec reads" in skipped[0]
    assert not (tmp_path / "prepared").exists()


def test_one_bad_file_says_how_to_skip_it_and_then_that_it_was_skipped(fashion, tmp_path):
    """A user's first run stops at the one damaged photo: the message names the -S that
    goes on, and the run after it counts one image, not "1 unreadable images"."""
    train_images, train_labels, _, _ = fashion
    root = tmp_path / "data"
    write_image_folder(root, train_images[:30], train_labels[:30])
    victim = sorted(root.glob("*/*.png"))[4]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    with pytest.raises(DataError) as caught:
        prepare_image_dataset(data_params(root), tmp_path / "prepared", workers=1, log=lambda line: None)
    assert str(caught.value).startswith(str(victim))
    assert str(caught.value).endswith("(data.bad_images: fail; -S data.bad_images=skip leaves such images out)")
    lines = []
    prepare_image_dataset(data_params(root, bad_images="skip"), tmp_path / "prepared", workers=1, log=lines.append)
    assert [line for line in lines if line.startswith("skipped")] == [
        f"skipped 1 unreadable image (data.bad_images: skip): {victim}: damaged or unreadable image "
        "(image file is truncated)"]


def test_auto_colour_among_grayscale_files_says_how_many_and_the_setting(fashion, tmp_path):
    """Gray photos of which a few were saved as RGB JPEGs: auto takes 3 channels, and said
    only 'colour images', hiding that most files are grayscale."""
    train_images, train_labels, _, _ = fashion
    root = tmp_path / "data"
    paths = write_image_folder(root, train_images[:30], train_labels[:30])
    for path in paths[:4]:
        Image.open(path).convert("RGB").save(path.with_suffix(".jpg"))
        path.unlink()
    lines = []
    prepare_image_dataset(data_params(root), tmp_path / "prepared", workers=1, log=lines.append)
    assert "channels: 3 (data.channels: auto; 4 of the 30 images sampled are colour files, the others " \
           "grayscale; -S data.channels=1 reads every image as grayscale)" in lines
    for path in sorted(root.glob("*/*.png")):
        Image.open(path).convert("RGB").save(path)
    prepare_image_dataset(data_params(root), tmp_path / "prepared", workers=1, log=lines.append)
    assert "channels: 3 (data.channels: auto; colour images)" in lines


def test_csv_paths_written_from_the_working_folder_are_named_so(fashion, tmp_path, monkeypatch):
    train_images, train_labels, _, _ = fashion
    monkeypatch.chdir(tmp_path)
    paths = write_image_folder(Path("data/set/images"), train_images[:12], train_labels[:12])
    manifest = write_csv(Path("data/set/labels.csv"), [{"path": str(path), "label": path.parent.name}
                                                       for path in paths])  # from the repo root
    with pytest.raises(DataError) as caught:
        scan_csv(manifest, {"path_column": "path", "label_column": "label"})
    message = str(caught.value)
    assert message.startswith(f"{manifest}:2: {paths[0]}: not in data/set/, but there is such a file")
    assert "relative to the CSV's own folder (data/set/)" in message
    write_csv(manifest, [{"path": str(path.relative_to("data/set")), "label": path.parent.name} for path in paths])
    assert len(scan_csv(manifest, {"path_column": "path", "label_column": "label"}).paths) == 12


def test_the_did_not_learn_warning_fits_the_run(tmp_path):
    spec = tmp_path / "mine.yaml"
    spec.write_text("name: mine\nrecipe: small_images\nlayers: [flatten, {dense: num_classes}]\n")
    params = {"recipe": "small_images", "model": {"spec": str(spec)}, "train": {"optimizer": {"lr": 0.01}}}
    line = learning_check.warning_line("test accuracy 0.2", params)
    assert "not meant for" not in line  # the spec names this recipe
    line = learning_check.warning_line("test accuracy 0.2", {**params, "recipe": "airbench"})
    assert "recipe 'airbench' not meant for" in line
    below = learning_check.verdict(3, 0.2)
    assert below == (False, "accuracy 0.2000 is below chance (0.3333 for 3 classes)")
    near = learning_check.verdict(3, 0.35)
    assert near == (False, "accuracy 0.3500 is within 0.05 of chance (0.3333 for 3 classes)")


def test_a_chance_verdict_on_a_handful_of_images_says_they_are_too_few():
    """A first try on 16 photos holds out 2 for validation and 4 for test: 0.5 on 2 images
    is a coin toss, not a verdict on the learning rate."""
    said = learning_check.verdict(2, 0.5, "val accuracy", images=2)
    assert said == (False, "val accuracy 0.5000 is within 0.05 of chance (0.5000 for 2 classes); on 2 images, "
                           "too few to tell (more images or a larger data.val_split)")
    history = [{"train/loss": 0.7, "train/accuracy": 0.5, "val/accuracy": 0.5}]
    assert learning_check.history_verdict(history, 2, images=2) == said
    assert learning_check.verdict(2, 0.5, "test accuracy", images=4)[1].endswith("larger data.test_split)")
    assert learning_check.verdict(2, 0.5, "test accuracy", images=300)[1].endswith("for 2 classes)")


def test_decoding_says_how_far_it_is_on_stderr_in_plain_lines_in_a_log(fashion, tmp_path, capsys, monkeypatch):
    # a folder of 100,000 photos takes minutes: a CI log hears of it now and then
    monkeypatch.setattr("cnnspec.progress.LINE_EVERY_S", 0)
    monkeypatch.setattr("cnnspec.progress.LINE_EVERY_MAX_S", 0)  # a line at every update
    train_images, train_labels, _, _ = fashion
    root = tmp_path / "photos"
    write_image_folder(root, train_images, train_labels)
    meta = prepare_image_dataset(data_params(root), tmp_path / "prepared", workers=1, log=lambda line: None)
    captured = capsys.readouterr()
    total = len(train_images)
    assert captured.out == "" and "\r" not in captured.err and "\x1b" not in captured.err
    assert [line.split(" (")[0] for line in captured.err.splitlines()] == [
        f"decoding: {meta['counts']['train']}/{total} images", f"decoding: {total}/{total} images"]
