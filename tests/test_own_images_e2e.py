"""The README's "Train on your own images" section, run verbatim on real images written
as files (Fashion-MNIST as PNGs in class folders, not its idx files) with every default:
the spec and recipe `auto` picks must learn, predictions must name their files, and one
override must switch back to a built-in dataset."""
import csv
import json
import re

import numpy as np
import pytest
import yaml

from tests.fakedata import write_idx_mirror
from tests.imagefiles import FASHION, fashion_subset, write_image_folder
from tests.pipeline_repo import REPO_ROOT, copy_checkout, ran_stages, shell

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)"),
]


def readme_own_images_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Train on your own images", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def own_images_repo(tmp_path_factory):
    repo = copy_checkout(tmp_path_factory.mktemp("repo"))
    # A user without internet points the built-ins at a mirror once (README, Without internet);
    # here a small idx mirror, so switching back to fashion-mnist downloads in a blink.
    mirror = tmp_path_factory.mktemp("mirror")
    train_images, train_labels, test_images, test_labels = fashion_subset(400, 100)
    write_idx_mirror(mirror, train_images, train_labels, test_images, test_labels)
    params = (repo / "params.yaml").read_text()
    params = params.replace("  url: ''", f"  url: file://{mirror}/").replace("  md5: ''", "  md5: skip")
    (repo / "params.yaml").write_text(params)
    shell("git commit -qam 'a local mirror'", repo)
    write_image_folder(repo / "data" / "my_images", train_images, train_labels, ".png")
    outputs = []
    for line in readme_own_images_commands():
        if line.startswith("cnnspec predict"):
            break
        outputs.append(shell(line, repo, timeout=300).output)
    return repo, "\n".join(outputs)


def test_the_readme_commands_train_with_defaults_that_fit(own_images_repo):
    repo, output = own_images_repo
    assert ran_stages(output) == ["download", "preprocess", "resolve", "train", "evaluate", "plot"]
    resolved = yaml.safe_load((repo / "params.resolved.yaml").read_text())
    assert resolved["model"]["spec"] == "specs/small_images.yaml" and resolved["recipe"] == "small_images"
    # 400 images: 320 after the test split, of which data.val_split auto holds out a fifth
    # (254 train, each class rounding its own share), so the recipe's batch 64 is capped to give 20 steps an epoch; the
    # images are 28x28 grayscale, and auto keeps them so.
    assert "data.val_split auto: 0.2 of 320 training images" in output
    assert resolved["train"]["batch_size"] == 12
    assert ("spec specs/small_images.yaml (model.spec: auto, for your own images (data.dataset: folder)), "
            "recipe small_images (recipe: auto, the one the spec names); batch 12: 21 steps an epoch on 254 "
            "training images of 1x28x28 (the recipe's batch 64 would give 3 steps; capped for at least 20)") in output
    assert "images 28x28 (data.image_size: auto): not resized" in output
    assert "channels: 1 (data.channels: auto; the 256 images sampled across the dataset are grayscale)" in output
    # DVC warns of the outputs a first run has no dvc.lock entry for, but never again of
    # the optional export stage's (its output is not cached); and one epoch is no "epochs".
    assert "models/export" not in output and "trained 15 epochs" in output
    accuracy = json.loads((repo / "metrics" / "eval.json").read_text())["accuracy"]
    assert accuracy > 0.6, accuracy  # 10 classes: chance is 0.1


def test_predictions_and_mistakes_name_the_files(own_images_repo):
    repo, _ = own_images_repo
    with open(repo / "metrics" / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 80 and all((repo / "data" / "my_images" / row["path"]).is_file() for row in rows)
    wrong = [row for row in rows if row["actual"] != row["predicted"]]
    with open(repo / "metrics" / "mistakes.csv", newline="") as file:
        mistakes = list(csv.DictReader(file))
    assert {row["path"] for row in mistakes} == {row["path"] for row in wrong}
    confidences = [float(row["confidence"]) for row in mistakes]
    assert confidences == sorted(confidences, reverse=True)
    files = json.loads((repo / "data" / "prepared" / "files.json").read_text())
    assert sorted(files) == ["test", "train", "val"] and len(files["test"]) == 80


def test_the_readme_predict_line_classifies_a_file(own_images_repo):
    repo, _ = own_images_repo
    line = [line for line in readme_own_images_commands() if line.startswith("cnnspec predict")][0]
    image = sorted((repo / "data" / "my_images" / "Trouser").glob("*.png"))[0]
    output = shell(line.replace("some/image.jpg", str(image)), repo).output
    assert "Trouser" in output


def test_the_fine_tuning_commands_of_the_docs_work_verbatim(own_images_repo):
    """docs/finetune.md: keep the trained model as models/base.pt under DVC, fine-tune from it."""
    repo, _ = own_images_repo
    text = (REPO_ROOT / "docs" / "finetune.md").read_text(encoding="utf-8")
    section = text.split("### Fine-tuning your model on new data", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    output = shell(block, repo, timeout=300).output
    assert (repo / "models" / "base.pt.dvc").is_file()
    assert re.search(r"train.init_from: loaded (\d+) of \1 tensors from models/base.pt", output), output[-3000:]
    resolved = yaml.safe_load((repo / "params.resolved.yaml").read_text())
    assert resolved["train"]["init_from"] == "models/base.pt" and resolved["train"]["epochs"] == 5
    accuracy = json.loads((repo / "metrics" / "eval.json").read_text())["accuracy"]
    assert accuracy > 0.6, accuracy


def test_one_override_switches_back_to_a_built_in_dataset(own_images_repo):
    repo, _ = own_images_repo
    output = shell("dvc exp run resolve -S data.dataset=fashion-mnist", repo, timeout=300).output
    assert "data.source (data/my_images) is used by folder and csv datasets only" in output
    assert "No file hash info" not in output
    meta = json.loads((repo / "data" / "prepared" / "meta.json").read_text())
    assert meta["dataset"] == "fashion-mnist" and meta["input_shape"] == [1, 28, 28]
    resolved = yaml.safe_load((repo / "params.resolved.yaml").read_text())
    assert resolved["model"]["spec"] == "specs/speedrun94.yaml" and resolved["recipe"] == "airbench"
    assert np.load(repo / "data" / "prepared" / "test_labels.npy").shape == (100,)
