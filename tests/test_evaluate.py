"""The evaluate stage: metrics against their definitions, test-time augmentation
views, outputs that are deterministic and complete."""
import csv
import io
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from cnnspec.data.datasets import Normalize
from cnnspec.errors import DataError, TrainingError
from cnnspec.inference import evaluation
from stages import evaluate as evaluate_stage
from tests.fakedata import write_fake_prepared
from tests.tinytraining import save_tiny_checkpoint

CLASSES = ["cat", "dog", "frog"]


def one_hot_probabilities(predicted, num_classes, confidence=0.9):
    rest = (1 - confidence) / (num_classes - 1)
    probabilities = np.full((len(predicted), num_classes), rest)
    probabilities[np.arange(len(predicted)), predicted] = confidence
    return probabilities


def scores_by_counting(actual, predicted, label):
    """Precision, recall, F1 of one class straight from their definitions."""
    pairs = list(zip(actual, predicted))
    true_positive = sum(1 for a, p in pairs if a == label and p == label)
    predicted_positive = sum(1 for a, p in pairs if p == label)
    actual_positive = sum(1 for a, p in pairs if a == label)
    precision = true_positive / predicted_positive if predicted_positive else 0.0
    recall = true_positive / actual_positive if actual_positive else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1, actual_positive


# frog (2) is never predicted: its precision must be 0, as sklearn's zero_division=0
ACTUAL = [0, 0, 0, 0, 1, 1, 1, 2, 2, 0]
PREDICTED = [0, 0, 1, 0, 1, 1, 0, 1, 0, 0]


def test_report_matches_the_definitions():
    report = evaluation.classification_report(
        np.array(ACTUAL), one_hot_probabilities(np.array(PREDICTED), 3), CLASSES)
    expected = {name: scores_by_counting(ACTUAL, PREDICTED, label) for label, name in enumerate(CLASSES)}

    correct = sum(a == p for a, p in zip(ACTUAL, PREDICTED))
    assert report["accuracy"] == round(correct / len(ACTUAL), 4)
    assert report["per_class"]["frog"]["precision"] == 0.0
    for name, (precision, recall, f1, support) in expected.items():
        got = report["per_class"][name]
        assert got["precision"] == pytest.approx(precision, abs=5e-5)
        assert got["recall"] == pytest.approx(recall, abs=5e-5)
        assert got["f1"] == pytest.approx(f1, abs=5e-5)
        assert got["support"] == support

    supports = [expected[name][3] for name in CLASSES]
    for position, metric in enumerate(["precision", "recall", "f1"]):
        values = [expected[name][position] for name in CLASSES]
        assert report["macro_avg"][metric] == pytest.approx(sum(values) / 3, abs=5e-5)
        weighted = sum(v * s for v, s in zip(values, supports)) / sum(supports)
        assert report["weighted_avg"][metric] == pytest.approx(weighted, abs=5e-5)
    assert report["macro_avg"]["support"] == report["weighted_avg"]["support"] == len(ACTUAL)


def test_confusion_matrix_rows_are_actual_columns_predicted():
    report = evaluation.classification_report(
        np.array(ACTUAL), one_hot_probabilities(np.array(PREDICTED), 3), CLASSES)
    matrix = report["confusion_matrix"]
    for a in range(3):
        for p in range(3):
            assert matrix[a][p] == sum(1 for x, y in zip(ACTUAL, PREDICTED) if (x, y) == (a, p))


def test_loss_is_cross_entropy_of_the_probabilities():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(3), size=20)
    actual = rng.integers(0, 3, size=20)
    expected = torch.nn.functional.nll_loss(torch.log(torch.from_numpy(probabilities)),
                                            torch.from_numpy(actual)).item()
    report = evaluation.classification_report(actual, probabilities, CLASSES)
    assert report["loss"] == round(expected, 4)


def test_a_certain_wrong_answer_gives_a_finite_loss():
    report = evaluation.classification_report(np.array([0]), np.array([[0.0, 1.0, 0.0]]), CLASSES)
    assert np.isfinite(report["loss"]) and report["loss"] > 20


# --- test-time augmentation ------------------------------------------------

def expected_views(batch: torch.Tensor) -> dict:
    """The views each TTA mode should show, built with numpy's reflect padding."""
    padded = torch.from_numpy(np.pad(batch.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect"))
    height, width = batch.shape[-2:]
    down_right = padded[:, :, :height, :width]
    up_left = padded[:, :, 2:, 2:]
    return {"plain": batch, "mirror": batch.flip(-1),
            "down_right": down_right, "down_right_mirror": down_right.flip(-1),
            "up_left": up_left, "up_left_mirror": up_left.flip(-1)}


class ViewSpotter(nn.Module):
    """Answers class k with near certainty when shown view k, so the averaged
    probabilities are exactly the weight each view got."""

    def __init__(self, views: dict):
        super().__init__()
        self.views = list(views.values())
        self.seen = []

    def forward(self, batch):
        matches = [k for k, view in enumerate(self.views) if torch.equal(batch, view)]
        assert len(matches) == 1, "shown an image that is none of the expected views"
        self.seen.append(matches[0])
        logits = torch.full((len(batch), len(self.views)), -60.0)
        logits[:, matches[0]] = 60.0
        return logits


@pytest.mark.parametrize("tta, weights", [
    ("none", {"plain": 1.0}),
    ("flip", {"plain": 0.5, "mirror": 0.5}),
    ("flip_translate", {"plain": 0.25, "mirror": 0.25, "down_right": 0.125,
                        "down_right_mirror": 0.125, "up_left": 0.125, "up_left_mirror": 0.125}),
])
def test_tta_averages_exactly_the_stated_views(tta, weights):
    images = np.random.default_rng(1).integers(0, 256, size=(2, 3, 5, 6), dtype=np.uint8)
    views = expected_views(Normalize([0.0] * 3, [1.0] * 3, "cpu")(torch.from_numpy(images)))
    model = ViewSpotter(views)
    probabilities = evaluation.predict_probabilities(model, images, [0.0] * 3, [1.0] * 3, tta=tta,
                                                     batch_size=2000, device="cpu")
    names = list(views)
    assert sorted(names[k] for k in model.seen) == sorted(weights)
    expected = np.array([weights.get(name, 0.0) for name in names])
    np.testing.assert_allclose(probabilities, np.tile(expected, (2, 1)), atol=1e-12)


def test_batches_do_not_change_the_probabilities():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    images = np.random.default_rng(2).integers(0, 256, size=(7, 1, 8, 8), dtype=np.uint8)
    whole = evaluation.predict_probabilities(model, images, [0.5], [0.25], "flip_translate", 100, "cpu")
    pieces = evaluation.predict_probabilities(model, images, [0.5], [0.25], "flip_translate", 3, "cpu")
    np.testing.assert_allclose(whole, pieces, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, rtol=1e-6)


def test_auto_batches_are_cache_sized_on_a_cpu_and_large_on_a_gpu(monkeypatch):
    from cnnspec.training import device

    assert device.inference_batch(torch.device("cpu"), 2000) == device.CPU_INFERENCE_BATCH
    assert device.inference_batch(torch.device("cuda"), 2000) == 2000
    seen = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    original = evaluation.probabilities_plain
    monkeypatch.setattr(evaluation, "TTA", {"none": lambda m, batch: seen.append(len(batch)) or original(m, batch)})
    monkeypatch.setattr(device, "CPU_INFERENCE_BATCH", 5)  # the batches must follow the constant
    images = np.zeros((12, 1, 2, 2), dtype=np.uint8)
    probabilities = evaluation.predict_probabilities(model, images, [0.5], [0.25], "none", "auto", "cpu")
    assert seen == [5, 5, 2] and probabilities.shape == (12, 3)


def test_images_are_normalized_with_the_given_mean_and_std():
    class Echo(nn.Module):  # logits = the pixels themselves
        def forward(self, batch):
            return batch.flatten(1) * 1000

    images = np.array([[[[255, 0]]], [[[0, 255]]]], dtype=np.uint8)  # (2, 1, 1, 2)
    mean, std = [0.5], [0.5]
    probabilities = evaluation.predict_probabilities(Echo(), images, mean, std, "none", 2000, device="cpu")
    assert probabilities.argmax(axis=1).tolist() == [0, 1]
    # (1 - 0.5) / 0.5 = 1 and (0 - 0.5) / 0.5 = -1: softmax of 1000 * [1, -1]
    np.testing.assert_allclose(probabilities[0], [1.0, 0.0], atol=1e-12)


def test_training_and_evaluation_show_the_model_the_same_numbers():
    """One normalization for train and test: a drift between them would cost accuracy
    silently."""
    from cnnspec.training.device import DeviceData

    images = np.random.default_rng(3).integers(0, 256, size=(6, 3, 4, 4), dtype=np.uint8)
    labels = np.arange(6) % 2
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    data = DeviceData({"train_images": images, "train_labels": labels, "val_images": images[:0],
                       "val_labels": labels[:0], "meta": {"mean": mean, "std": std, "classes": ["a", "b"]}},
                      torch.device("cpu"))
    in_training = data.batch(data.train_images, torch.arange(6))

    seen = []

    class Capture(nn.Module):
        def forward(self, batch):
            seen.append(batch.clone())
            return torch.zeros(len(batch), 2)

    evaluation.predict_probabilities(Capture(), images, mean, std, "none", 2000, device="cpu")
    assert torch.equal(seen[0], in_training)
    np.testing.assert_allclose(seen[0].numpy(), (images / 255 - np.array(mean)[:, None, None])
                               / np.array(std)[:, None, None], rtol=1e-5, atol=1e-6)


# --- outputs ---------------------------------------------------------------

def test_predictions_csv_has_class_names_and_quotes_commas():
    text = evaluation.predictions_csv(np.array([0, 1, 2]), np.array([1, 1, 0]), ["a", "b, c", "d"])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [list(row.values()) for row in rows] == [["0", "a", "b, c"], ["1", "b, c", "b, c"],
                                                  ["2", "d", "a"]]


def test_report_table_lists_every_class_and_the_averages():
    report = evaluation.classification_report(
        np.array(ACTUAL), one_hot_probabilities(np.array(PREDICTED), 3), CLASSES)
    table = evaluation.report_table(report)
    for word in CLASSES + ["macro avg", "weighted avg", "accuracy", f"{report['accuracy']:.4f}"]:
        assert word in table


# --- the stage, with a real checkpoint ------------------------------------

@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory with params.yaml, data/prepared and models/model.pt."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("evaluate: {batch_size: 10, tta: flip}\n")
    meta = write_fake_prepared(tmp_path / "data" / "prepared", n_train=24, n_val=24, n_test=24,
                               classes=CLASSES, seed=3, learnable=False)
    save_tiny_checkpoint(tmp_path / "models" / "model.pt", meta)
    return tmp_path


def test_stage_writes_eval_json_and_predictions(project, capsys):
    evaluate_stage.main()
    report = json.loads((project / "metrics" / "eval_report.json").read_text())
    headline = json.loads((project / "metrics" / "eval.json").read_text())
    assert set(headline) == {"accuracy", "loss", "macro_f1", "learned"}  # the DVC metrics: a few rows
    assert headline["accuracy"] == report["accuracy"] and headline["macro_f1"] == report["macro_avg"]["f1"]
    labels = np.load(project / "data" / "prepared" / "test_labels.npy")
    rows = list(csv.DictReader(open(project / "metrics" / "predictions.csv")))

    assert set(report) >= {"accuracy", "loss", "per_class", "macro_avg", "weighted_avg",
                           "confusion_matrix", "classes", "tta"}
    assert report["tta"] == "flip" and report["classes"] == CLASSES
    assert [row["actual"] for row in rows] == [CLASSES[label] for label in labels]
    hits = sum(row["actual"] == row["predicted"] for row in rows)
    assert report["accuracy"] == round(hits / len(rows), 4)
    assert np.array(report["confusion_matrix"]).sum() == len(labels)
    assert "weighted avg" in capsys.readouterr().out
    assert not list((project / "metrics").glob(".*.tmp"))


def test_the_stage_says_how_far_it_is_on_stderr_in_plain_lines_in_a_log(project, capsys, monkeypatch):
    # a resnet50 on 10,000 images at 224x224 on a CPU runs for minutes: a CI log hears of it
    monkeypatch.setattr("cnnspec.progress.LINE_EVERY_S", 0)
    monkeypatch.setattr("cnnspec.progress.LINE_EVERY_MAX_S", 0)  # a line at every update
    evaluate_stage.main()  # 24 test images, batch 10
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if not line.startswith("warning: this run did not learn")]
    assert [line.split(" (")[0] for line in lines] == [f"evaluating: {n}/24 images" for n in (10, 20, 24)]
    assert all(re.search(r"\(\d+%\), [\d,.]+ images/s, about \d+ s left$", line) for line in lines), lines
    assert "\r" not in captured.err and "\x1b" not in captured.err
    assert "evaluating" not in captured.out


def test_one_batch_says_nothing_of_how_far_it_is(project, capsys, monkeypatch):
    monkeypatch.setattr("cnnspec.progress.LINE_EVERY_S", 0)
    (project / "params.yaml").write_text("evaluate: {batch_size: 24, tta: none}\n")
    evaluate_stage.main()
    assert "evaluating" not in capsys.readouterr().err


def test_eval_json_is_byte_identical_on_two_runs(project):
    evaluate_stage.main()
    first = (project / "metrics" / "eval.json").read_bytes()
    first_csv = (project / "metrics" / "predictions.csv").read_bytes()
    evaluate_stage.main()
    assert (project / "metrics" / "eval.json").read_bytes() == first
    assert (project / "metrics" / "predictions.csv").read_bytes() == first_csv


def test_missing_model_names_the_file_and_the_train_stage(project):
    (project / "models" / "model.pt").unlink()
    with pytest.raises(TrainingError, match=r"models/model\.pt: missing; run the train stage"):
        evaluation.evaluate_checkpoint("models/model.pt", "data/prepared", tta="none", batch_size=2000)
    assert not (project / "metrics").exists()


def test_missing_data_names_the_file_and_the_preprocess_stage(project):
    (project / "data" / "prepared" / "test_images.npy").unlink()
    with pytest.raises(DataError, match=r"test_images\.npy.*preprocess"):
        evaluation.evaluate_checkpoint("models/model.pt", "data/prepared", tta="none", batch_size=2000)


def test_model_trained_on_other_classes_is_refused(project):
    meta = json.loads((project / "data" / "prepared" / "meta.json").read_text())
    save_tiny_checkpoint(project / "models" / "model.pt", {**meta, "classes": ["a", "b", "c"]})
    with pytest.raises(DataError, match="classes"):
        evaluation.evaluate_checkpoint("models/model.pt", "data/prepared", tta="none", batch_size=2000)


def test_stage_exits_1_with_one_line_when_the_model_is_missing(project, capsys):
    (project / "models" / "model.pt").unlink()
    with pytest.raises(SystemExit) as exit_info:
        evaluate_stage.main()
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "models/model.pt" in error and "train" in error
    assert not (project / "metrics").exists()


def test_stage_scores_the_checkpoint_as_the_model_itself_does(project):
    """load_network must rebuild the very model that was saved: same predictions."""
    meta = json.loads((project / "data" / "prepared" / "meta.json").read_text())
    model = save_tiny_checkpoint(project / "models" / "model.pt", meta)
    (project / "params.yaml").write_text("evaluate: {batch_size: 7, tta: none}\n")

    evaluate_stage.main()

    images = torch.from_numpy(np.load(project / "data" / "prepared" / "test_images.npy")).float() / 255
    mean, std = (torch.tensor(meta[key]).view(1, -1, 1, 1) for key in ("mean", "std"))
    with torch.no_grad():
        expected = model.eval()((images - mean) / std).argmax(dim=1).numpy()
    rows = list(csv.DictReader(open(project / "metrics" / "predictions.csv")))
    assert [row["predicted"] for row in rows] == [CLASSES[k] for k in expected]
    labels = np.load(project / "data" / "prepared" / "test_labels.npy")
    report = json.loads((project / "metrics" / "eval_report.json").read_text())
    assert report["accuracy"] == round(float((expected == labels).mean()), 4)


def test_top5_accuracy_counts_the_true_class_among_the_five_most_probable():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(8), size=200)
    actual = rng.integers(0, 8, 200)
    ranks = [int((probabilities[i] > probabilities[i, actual[i]]).sum()) for i in range(200)]
    expected = sum(rank < 5 for rank in ranks) / 200
    report = evaluation.classification_report(actual, probabilities, [f"c{i}" for i in range(8)])
    assert report["top5_accuracy"] == round(expected, 4)
    assert report["accuracy"] <= report["top5_accuracy"] < 1.0
    # five classes or fewer: top-5 would always be 1, so it is left out
    small = evaluation.classification_report(np.array(ACTUAL), one_hot_probabilities(np.array(PREDICTED), 3), CLASSES)
    assert "top5_accuracy" not in small


def test_the_docs_give_the_csv_columns_evaluate_writes():
    """docs/datasets.md and docs/architecture.md quote these headers to people reading the files;
    without file paths (the built-in datasets) the same columns lack `path`."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    docs = (root / "docs" / "datasets.md").read_text() + (root / "docs" / "architecture.md").read_text()
    actual, probabilities = np.array([0, 1]), one_hot_probabilities(np.array([1, 1]), 3)

    def headers(paths):
        return [evaluation.predictions_csv(actual, probabilities.argmax(1), CLASSES, probabilities,
                                           paths).splitlines()[0],
                evaluation.mistakes_csv(actual, probabilities, CLASSES, paths).splitlines()[0]]

    for with_paths, without in zip(headers(["a.png", "b.png"]), headers(None)):
        assert f"`{with_paths}`" in docs
        assert without.split(",") == [column for column in with_paths.split(",") if column != "path"]
