"""Learning on real images: Debian's Fashion-MNIST (dataset-fashion-mnist, which
.ci/run installs), one CPU epoch on a third of its training images through the real stage
scripts, must reach at least 85% on all 10,000 test images (chance: 10%)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fakedata import write_idx_mirror
from tests.fashion import FASHION, SPEC
from tests.imagefiles import fashion_subset

REPO_ROOT = Path(__file__).resolve().parent.parent

# A third of the images with one-cycle Adam: 86.9% (the bar is 85%); half of them
# without a schedule gave 86.2% in 1.7x the time.
TRAIN_IMAGES = 20_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)"),
]


def run_stage(name, cwd):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "stages" / f"{name}.py")], cwd=cwd,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"stage {name} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_one_cpu_epoch_on_fashion_mnist_reaches_85_percent(tmp_path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "fashion_small.yaml").write_text(SPEC)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    train_images, train_labels, test_images, test_labels = fashion_subset(TRAIN_IMAGES, 10_000)
    write_idx_mirror(mirror, train_images, train_labels, test_images, test_labels)
    params["data"].update(dataset="fashion-mnist", url=f"file://{mirror}/", md5="skip", val_split=0.1)
    params["model"]["spec"] = "specs/fashion_small.yaml"
    train = params["train"]
    train.update(device="cpu", epochs=1, batch_size=64, precision="off", compile=False)
    train["optimizer"].update(name="adam", lr=0.004, weight_decay=0.0)
    train["scheduler"].update(name="onecycle", warmup_epochs=0.2)
    train["lookahead"]["enabled"] = False
    train["loss"]["label_smoothing"] = 0.0
    train["augment"].update(alternating_flip=False, hflip=False, translate=0)
    params["evaluate"]["tta"] = "none"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    for stage in ("download", "preprocess", "train", "evaluate"):
        run_stage(stage, tmp_path)

    metrics = json.loads((tmp_path / "metrics" / "eval_report.json").read_text())
    assert metrics["classes"][0] == "T-shirt/top" or len(metrics["classes"]) == 10
    assert metrics["accuracy"] >= 0.85, metrics["accuracy"]
