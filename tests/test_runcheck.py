"""A run that did not learn says so: one warning line from train and evaluate, and
`learned: false` in the metrics (cnnspec/training/learning_check.py)."""
import json
import shutil
from pathlib import Path

import pytest

from cnnspec.training import learning_check as runcheck
from tests.fashion import FASHION, write_subset

REPO = Path(__file__).resolve().parent.parent

SMALL_SPEC = """\
name: small
layers:
  - conv: {filters: 16, kernel: 3, activation: relu}
  - max_pool: 2
  - flatten
  - dense: {units: num_classes}
"""


@pytest.mark.parametrize("classes, accuracy, learned", [
    (10, 0.10, False), (10, 0.149, False), (10, 0.16, True), (10, 0.85, True),
    (100, 0.014, False), (100, 0.02, True), (2, 0.54, False), (2, 0.60, True),
])
def test_accuracy_near_chance_is_not_learning(classes, accuracy, learned):
    assert runcheck.verdict(classes, accuracy)[0] is learned


def test_a_loss_that_never_falls_below_the_first_epochs_is_not_learning():
    assert runcheck.verdict(10, 0.5, train_losses=[2.3, 2.4, 2.31])[0] is False
    assert runcheck.verdict(10, 0.5, train_losses=[2.3, 2.4, 1.9])[0] is True
    assert runcheck.verdict(10, 0.5, train_losses=[2.3])[0] is True  # one epoch: nothing to compare
    history = [{"train/loss": 2.3, "train/accuracy": 0.1}, {"train/loss": 2.2, "train/accuracy": 0.11}]
    learned, reason = runcheck.history_verdict(history, 10)  # no validation split: train accuracy
    assert not learned and reason.startswith("train accuracy 0.1100 is within 0.05 of chance")


def test_the_warning_is_one_line_naming_the_likely_causes():
    params = {"recipe": "airbench", "model": {"spec": "specs/simcnn.yaml"}, "train": {"optimizer": {"lr": 1.5}}}
    line = runcheck.warning_line("val accuracy 0.1000 is within 0.05 of chance", params)
    assert "\n" not in line and line.startswith("warning: this run did not learn: val accuracy 0.1000")
    assert "train.optimizer.lr 1.5" in line and "recipe 'airbench' not meant for specs/simcnn.yaml" in line
    assert "which names 'keras_adam' (-S recipe=auto uses it)" in line


def test_a_default_recipe_is_never_suggested_as_its_own_fix():
    """A spec naming no recipe trains with keras_adam, the default: the warning asks for a
    recipe, not for -S recipe=keras_adam, the one that just did not learn."""
    params = {"recipe": "keras_adam", "model": {"spec": "specs/resnet50_finetune.yaml"},
              "train": {"optimizer": {"lr": 0.001}}}
    line = runcheck.warning_line("val accuracy 0.2188 is within 0.05 of chance", params)
    assert "recipe=keras_adam" not in line
    assert ("recipe 'keras_adam' not meant for specs/resnet50_finetune.yaml, which names no recipe (set `recipe:` "
            "in the spec, or pick one with -S recipe=NAME, docs/recipes.md)") in line


@pytest.mark.parametrize("params", [
    {"train": {"optimizer": {"lr": "auto"}}}, {"train": {"optimizer": "adam"}}, {"train": None},
    {"model": "specs/simcnn.yaml", "recipe": "airbench"}, {"recipe": ["a"], "model": {"spec": 3}},
])
def test_the_warning_takes_the_params_a_checkpoint_of_another_version_stores(params):
    """evaluate words the warning from the params stored in models/model.pt, which another
    cnnspec version may have written with other shapes of value: the generic causes, no crash."""
    line = runcheck.warning_line("test accuracy 0.1000 is within 0.05 of chance", params)
    assert "\n" not in line and "likely causes: the learning rate (train.optimizer.lr)" in line


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    if not FASHION.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist (.ci/run installs it)")
    return write_subset(tmp_path_factory.mktemp("fashion") / "prepared", n_train=1536, n_test=1000)


def train_and_evaluate(folder: Path, prepared: Path, lr: float, monkeypatch, capsys) -> tuple[dict, dict, str]:
    from stages import evaluate as evaluate_stage
    from stages.train import run

    (folder / "specs").mkdir(parents=True)
    (folder / "specs" / "small.yaml").write_text(SMALL_SPEC)
    shutil.copytree(prepared, folder / "data" / "prepared")
    (folder / "params.yaml").write_text(
        "recipe: keras_adam\nmodel: {spec: specs/small.yaml}\n"
        f"train: {{device: cpu, epochs: 2, batch_size: 64, optimizer: {{lr: {lr}}}}}\n"
        "evaluate: {tta: none}\n")
    monkeypatch.chdir(folder)
    capsys.readouterr()
    run()
    evaluate_stage.main()
    printed = capsys.readouterr()
    train_metrics = json.loads((folder / "metrics" / "train" / "metrics.json").read_text())
    headline = json.loads((folder / "metrics" / "eval.json").read_text())
    return train_metrics, headline, printed.err + printed.out


@pytest.mark.slow
def test_a_broken_learning_rate_warns_in_train_and_evaluate(fashion, tmp_path, monkeypatch, capsys):
    train_metrics, headline, printed = train_and_evaluate(tmp_path / "broken", fashion, 30.0, monkeypatch, capsys)
    warnings = [line for line in printed.splitlines() if line.startswith("warning: this run did not learn")]
    assert len(warnings) == 2, printed  # one from train, one from evaluate
    assert "train.optimizer.lr 30" in warnings[0] and "test accuracy" in warnings[1]
    assert train_metrics["train"]["learned"] is False and headline["learned"] is False


@pytest.mark.slow
def test_a_sane_learning_rate_learns_without_a_warning(fashion, tmp_path, monkeypatch, capsys):
    train_metrics, headline, printed = train_and_evaluate(tmp_path / "sane", fashion, 0.002, monkeypatch, capsys)
    assert "did not learn" not in printed
    assert train_metrics["train"]["learned"] is True and headline["learned"] is True
    assert headline["accuracy"] > 0.6
