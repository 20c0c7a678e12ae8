"""End to end on files: the same 2,000 + 500 Fashion-MNIST images trained once from idx
files (the stage scripts) and once as PNG files in class folders through DVC (`dvc add` +
`dvc exp run -S data.dataset=folder -S data.source=...`, the README's commands) give the
same prepared arrays and the same accuracy; changing one image makes preprocess stale."""
import json

import numpy as np
import pytest
import yaml

from tests.fakedata import write_idx_mirror
from tests.fashion import SPEC
from tests.imagefiles import FASHION, class_folder_name, fashion_subset, write_image_folder
from tests.pipeline_repo import copy_checkout, quick_training, ran_stages, run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)"),
]


def sorted_by_class(images, labels):
    order = np.argsort(labels, kind="stable")  # the order a class-folder scan reads them in
    return images[order], labels[order]


def test_folder_dataset_through_dvc_matches_the_idx_pipeline(tmp_path):
    train_images, train_labels, test_images, test_labels = fashion_subset(2000, 500)
    train_images, train_labels = sorted_by_class(train_images, train_labels)
    test_images, test_labels = sorted_by_class(test_images, test_labels)

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_idx_mirror(mirror, train_images, train_labels, test_images, test_labels)

    repo = tmp_path / "repo"
    copy_checkout(repo)
    (repo / "specs" / "fashion_small.yaml").write_text(SPEC)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(dataset="fashion-mnist", url=f"file://{mirror}/", md5="skip", val_split=0.1,
                          image_size=[28, 28], channels=1)
    params["model"]["spec"] = "specs/fashion_small.yaml"
    quick_training(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "idx params"], repo)
    for stage in ("download", "preprocess", "resolve", "train", "evaluate"):  # the stages dvc repro would run
        run(["python", f"stages/{stage}.py"], repo, timeout=300)
    idx_eval = json.loads((repo / "metrics" / "eval_report.json").read_text())
    idx_train = np.load(repo / "data" / "prepared" / "train_images.npy")

    # Folder names sort in label order, so both pipelines see the same images in the same order.
    images_root = repo / "data" / "my_images"
    for split, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        write_image_folder(images_root, images, labels, ".png", split=split)
        for label in range(10):
            folder = images_root / split / class_folder_name(label)
            folder.rename(folder.parent / f"{label}_{folder.name}")
    run(["dvc", "add", "data/my_images"], repo)
    run(["git", "add", "data/my_images.dvc", "data/.gitignore"], repo)
    run(["git", "commit", "-qm", "track the images with DVC"], repo)
    output = run(["dvc", "exp", "run", "-S", "data.dataset=folder", "-S", "data.source=data/my_images"],
                 repo, timeout=300)
    assert ran_stages(output) == ["download", "preprocess", "resolve", "train", "evaluate", "plot"]
    folder_eval = json.loads((repo / "metrics" / "eval_report.json").read_text())
    assert np.array_equal(np.load(repo / "data" / "prepared" / "train_images.npy"), idx_train)
    assert folder_eval["classes"][0] == "0_T-shirt-top" and len(folder_eval["classes"]) == 10
    assert abs(folder_eval["accuracy"] - idx_eval["accuracy"]) <= 0.01, (folder_eval["accuracy"], idx_eval["accuracy"])
    assert idx_eval["accuracy"] > 0.5, idx_eval["accuracy"]  # it learned: chance is 0.1

    # One image changed: DVC sees the tracked folder modified and preprocess stale.
    changed = sorted((images_root / "train").glob("3_*/*.png"))[0]
    changed.write_bytes(sorted((images_root / "train").glob("7_*/*.png"))[0].read_bytes())
    status = run(["dvc", "status", "preprocess"], repo)
    assert "preprocess" in status and "data/my_images" in status and "modified" in status
