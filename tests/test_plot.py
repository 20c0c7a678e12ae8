"""The plot stage: PNGs that open at sensible sizes and show what they claim."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from dvclive import Live
from matplotlib.image import imread

from cnnspec.errors import DataError, TrainingError
from cnnspec.inference.evaluation import confusion_matrix
from stages import plot as plot_stage
from tests.fakedata import write_fake_prepared

CLASSES = ["airplane", "cat", "dog", "frog"]
EPOCHS = 3


def write_predictions(path: Path, actual, predicted):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{i},{CLASSES[a]},{CLASSES[p]}" for i, (a, p) in enumerate(zip(actual, predicted))]
    path.write_text("index,actual,predicted\n" + "\n".join(rows) + "\n")


def write_eval_json(path: Path, actual, predicted):
    """What the evaluate stage writes, as far as plot reads it."""
    counts = confusion_matrix(np.asarray(actual), np.asarray(predicted), len(CLASSES))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"classes": CLASSES, "confusion_matrix": counts.tolist()}))


def training_history():
    return {"train/loss": [2.0, 1.2, 0.8], "val/loss": [2.1, 1.4, 1.1],
            "train/accuracy": [0.3, 0.6, 0.8], "val/accuracy": [0.25, 0.5, 0.7],
            "lr": [0.1, 0.05, 0.01]}


def write_training_logs(folder: Path):
    """The logs as the train stage writes them: DVCLive's TSVs."""
    with Live(str(folder), dvcyaml=False, save_dvc_exp=False) as live:
        for epoch in range(EPOCHS):
            for name, values in training_history().items():
                live.log_metric(name, values[epoch])
            live.next_step()


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("plot: {misclassified: 9}\n")
    write_fake_prepared(tmp_path / "data" / "prepared", n_train=20, n_val=20, n_test=20, classes=CLASSES,
                        learnable=False)
    actual = np.arange(20) % len(CLASSES)
    predicted = actual.copy()
    predicted[[1, 4, 7, 10, 13]] = 0  # index 4 is an airplane already: four mistakes
    write_predictions(tmp_path / "metrics" / "predictions.csv", actual, predicted)
    write_eval_json(tmp_path / "metrics" / "eval_report.json", actual, predicted)
    write_training_logs(tmp_path / "metrics" / "train")
    return tmp_path


def test_stage_writes_three_pngs_of_sensible_size(project, capsys):
    plot_stage.main()
    assert capsys.readouterr().out == \
        "wrote metrics/plots/confusion_matrix.png, learning_curves.png and misclassified.png\n"
    written = sorted(path.name for path in (project / "metrics" / "plots").iterdir())
    assert written == ["confusion_matrix.png", "learning_curves.png", "misclassified.png"]
    for name in written:
        pixels = imread(project / "metrics" / "plots" / name)
        height, width = pixels.shape[:2]
        assert 600 <= width <= 2000 and 200 <= height <= 2000, (name, pixels.shape)
        assert pixels.std() > 0.01, f"{name} is blank"


def test_confusion_heatmap_has_a_cell_and_a_count_per_class_pair():
    counts = np.arange(16).reshape(4, 4)
    axes = plot_stage.confusion_figure(counts, CLASSES).axes[0]
    assert axes.images[0].get_array().shape == (4, 4)
    assert [text.get_text() for text in axes.texts] == [str(n) for n in counts.flatten()]
    assert [label.get_text() for label in axes.get_xticklabels()] == CLASSES
    assert [label.get_text() for label in axes.get_yticklabels()] == CLASSES


def test_the_confusion_figure_shows_eval_json_s_matrix(project):
    counts = plot_stage.read_confusion_matrix(project / "metrics" / "eval_report.json", CLASSES)
    assert counts.sum() == 20 and counts.trace() == 16
    assert counts[1, 0] == 2 and counts[2, 0] == 1 and counts[3, 0] == 1
    plot_stage.main()
    drawn = [text.get_text() for text in
             plot_stage.confusion_figure(counts, CLASSES).axes[0].texts]
    assert drawn == [str(n) for n in counts.flatten()]


@pytest.mark.parametrize("report, problem", [
    (None, "missing; run the evaluate stage"),
    ({"classes": ["a", "b"], "confusion_matrix": [[1, 0], [0, 1]]}, "other classes"),
    ({"classes": CLASSES}, "no confusion_matrix"),
])
def test_an_eval_json_that_does_not_fit_is_refused_and_nothing_is_written(project, report, problem):
    path = project / "metrics" / "eval_report.json"
    path.unlink()
    if report is not None:
        path.write_text(json.dumps(report))
    with pytest.raises(DataError, match=problem):
        plot_stage.read_confusion_matrix(path, CLASSES)
    with pytest.raises(SystemExit):
        plot_stage.main()
    assert not (project / "metrics" / "plots").exists()


def test_an_eval_json_of_another_test_split_is_refused(project):
    write_eval_json(project / "metrics" / "eval_report.json", np.arange(8) % 4, np.arange(8) % 4)
    with pytest.raises(SystemExit):
        plot_stage.main()
    assert not (project / "metrics" / "plots").exists()


def test_learning_curves_plot_train_and_validation_and_the_learning_rate(project):
    figure = plot_stage.learning_curves_figure(project / "metrics" / "train" / "plots" / "metrics")
    loss_axes, accuracy_axes, lr_axes = figure.axes
    history = training_history()
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        lines = {line.get_label(): line for line in axes.get_lines()}
        assert set(lines) == {"train", "val"}
        for split in ("train", "val"):
            assert list(lines[split].get_xdata()) == [1, 2, 3]
            assert list(lines[split].get_ydata()) == history[f"{split}/{metric}"]
    assert list(lr_axes.get_lines()[0].get_ydata()) == history["lr"]


def test_learning_curves_without_a_validation_split_show_training_only(project):
    """data.val_split: 0 logs no val/ series; the curves are the training ones."""
    import shutil
    logs = project / "metrics" / "train" / "plots" / "metrics"
    shutil.rmtree(logs / "val")
    figure = plot_stage.learning_curves_figure(logs)
    for axes in figure.axes[:2]:
        assert [line.get_label() for line in axes.get_lines()] == ["train"]
    plot_stage.main()
    assert imread(project / "metrics" / "plots" / "learning_curves.png").shape[1] >= 600


def _shown_at(mosaic: np.ndarray, picture: np.ndarray) -> list[tuple[int, int]]:
    """Every (top, left) where `picture` (H, W[, C]) sits in `mosaic`."""
    height, width = picture.shape[:2]
    return [(top, left) for top in range(mosaic.shape[0] - height + 1)
            for left in range(mosaic.shape[1] - width + 1)
            if np.array_equal(mosaic[top:top + height, left:left + width], picture)]


def test_misclassified_grid_shows_the_first_mistakes_with_both_labels():
    images = np.random.default_rng(0).integers(0, 255, (6, 1, 5, 5), dtype=np.uint8)
    actual = np.array([0, 1, 2, 3, 1, 2])
    predicted = np.array([0, 0, 0, 3, 3, 3])  # mistakes at 1, 2, 4, 5
    figure = plot_stage.misclassified_figure(images, actual, predicted, CLASSES, count=3)
    (axes,) = figure.axes  # one picture of the thumbnails, titled above each
    assert [text.get_text() for text in axes.texts] == [
        "true: cat\npred: airplane", "true: dog\npred: airplane", "true: cat\npred: frog"]
    mosaic = axes.images[0].get_array()
    places = [_shown_at(mosaic, images[index, 0]) for index in (1, 2, 4)]
    assert all(len(found) == 1 for found in places)  # each mistake once, in reading order:
    (first,), (second,), (third,) = places          # two to a row, then the next row
    assert first[0] == second[0] < third[0] and first[1] == third[1] < second[1]
    assert not _shown_at(mosaic, images[0, 0]) and not _shown_at(mosaic, images[3, 0])  # right ones
    for text, (top, left) in zip(axes.texts, (first, second, third)):
        x, y = text.xy  # each title just above its own image
        assert left <= x <= left + 5 and y == top - 0.5


def test_misclassified_grid_shows_the_most_confident_mistakes_first(project, monkeypatch):
    """An own-image test set is sorted by class: the grid showed the first classes' mistakes
    only. It takes mistakes.csv's order, where a mislabelled image tends to sit at the top."""
    from cnnspec.inference.evaluation import mistakes_csv, predictions_csv

    (project / "params.yaml").write_text("plot: {misclassified: 2}\n")
    actual = np.repeat(np.arange(len(CLASSES)), 5)  # sorted by class, as a folder's test set
    probabilities = np.full((20, len(CLASSES)), 0.1)
    probabilities[np.arange(20), actual] = 0.7
    for index, wrong, confidence in ((1, 2, 0.4), (2, 3, 0.5), (16, 0, 0.9), (12, 1, 0.8)):
        probabilities[index] = 0.0
        probabilities[index, wrong], probabilities[index, actual[index]] = confidence, 1 - confidence
    predicted = probabilities.argmax(axis=1)
    paths = [f"{CLASSES[label]}/{index:03d}.png" for index, label in enumerate(actual)]
    (project / "metrics" / "predictions.csv").write_text(
        predictions_csv(actual, predicted, CLASSES, probabilities, paths))
    write_eval_json(project / "metrics" / "eval_report.json", actual, predicted)
    drawn, draw = {}, plot_stage.misclassified_figure
    monkeypatch.setattr(plot_stage, "misclassified_figure",
                        lambda *args: drawn.setdefault("misclassified.png", draw(*args)))
    plot_stage.main()
    titles = [text.get_text().split("\n")[0] for text in drawn["misclassified.png"].axes[0].texts]
    mistakes = mistakes_csv(actual, probabilities, CLASSES, paths).splitlines()[1:3]
    most_confident = [line.split(",")[0] for line in mistakes]
    assert titles == ["016.png", "012.png"] == [Path(path).name for path in most_confident]


def test_misclassified_grid_keeps_colour_images_in_colour():
    images = np.random.default_rng(1).integers(0, 255, (2, 3, 4, 6), dtype=np.uint8)
    figure = plot_stage.misclassified_figure(images, np.array([0, 1]), np.array([1, 0]), CLASSES, count=9)
    mosaic = figure.axes[0].images[0].get_array()
    assert mosaic.shape[2] == 3
    assert all(len(_shown_at(mosaic, image.transpose(1, 2, 0))) == 1 for image in images)


def test_no_mistakes_still_gives_a_figure(project):
    write_predictions(project / "metrics" / "predictions.csv", np.arange(20) % 4, np.arange(20) % 4)
    plot_stage.main()
    assert imread(project / "metrics" / "plots" / "misclassified.png").shape[1] >= 600


def test_missing_training_log_names_it_and_writes_nothing(project):
    (project / "metrics" / "train" / "plots" / "metrics" / "val" / "loss.tsv").unlink()
    with pytest.raises(TrainingError, match=r"val/loss\.tsv: missing; run the train stage"):
        plot_stage.learning_curves_figure(project / "metrics" / "train" / "plots" / "metrics")
    with pytest.raises(SystemExit):
        plot_stage.main()
    assert not (project / "metrics" / "plots").exists()


def test_predictions_of_unknown_classes_are_refused(project):
    (project / "metrics" / "predictions.csv").write_text("index,actual,predicted\n0,cat,zebra\n")
    with pytest.raises(DataError, match="predicted class 'zebra'"):
        plot_stage.read_predictions(project / "metrics" / "predictions.csv", CLASSES)


@pytest.mark.parametrize("damage, file, words", [
    (lambda p: p.write_bytes(p.read_bytes() + b"\xff\xfe\n"), "metrics/train/plots/metrics/train/loss.tsv",
     "loss.tsv: not a readable TSV file ("),
    (lambda p: p.write_text(p.read_text() + "1\t2\t" + "9" * 200_000 + "\n"),
     "metrics/train/plots/metrics/train/loss.tsv", "loss.tsv: not a readable TSV file (field larger than"),
    (lambda p: p.write_bytes(b"\xff" + p.read_bytes()), "metrics/predictions.csv",
     "predictions.csv: not a readable CSV file ("),
    (lambda p: p.write_text(json.dumps(json.loads(p.read_text()) | {"confusion_matrix": [[10**30]]})),
     "metrics/eval_report.json", "eval_report.json: no confusion_matrix and classes"),
    (lambda p: p.write_text("[" * 100_000), "metrics/eval_report.json", "eval_report.json: no confusion_matrix"),
    # matplotlib's ticks cannot span -1e308 to 1e308: a traceback after the first PNG was written
    (lambda p: p.write_text(p.read_text() + "3\t1e308\n4\t-1e308\n"),
     "metrics/train/plots/metrics/train/loss.tsv", "loss.tsv:5: 1e+308 is beyond any step or loss a run logs"),
], ids=["tsv-bytes", "tsv-huge-field", "csv-bytes", "matrix-overflow", "deeply-nested-json", "tsv-huge-value"])
def test_a_damaged_log_or_report_is_one_line_naming_it(project, capsys, damage, file, words):
    damage(project / file)
    with pytest.raises(SystemExit) as caught:
        plot_stage.main()
    error = capsys.readouterr().err
    assert caught.value.code != 0 and error.startswith("error: ") and words in error, error
    assert error.count("\n") == 1 and not (project / "metrics" / "plots").exists()


def test_a_prediction_row_cut_short_leaves_its_thumbnail_untitled(project):
    """A predictions.csv edited by hand: a mistake's row has no path field."""
    csv_path = project / "metrics" / "predictions.csv"
    lines = csv_path.read_text().splitlines()
    lines[0] += ",path"
    lines[1:] = [f"{line},img{i}.png" for i, line in enumerate(lines[1:])]
    lines[2] = lines[2].rsplit(",", 1)[0]  # index 1, a mistake: no path
    csv_path.write_text("\n".join(lines) + "\n")
    plot_stage.main()
    assert (project / "metrics" / "plots" / "misclassified.png").stat().st_size > 1000


@pytest.mark.timeout(30)
@pytest.mark.parametrize("file", ["metrics/train/plots/metrics/train/loss.tsv", "metrics/predictions.csv"])
def test_a_log_or_table_that_is_a_fifo_is_named_and_never_blocks(project, capsys, file):
    (project / file).unlink()
    os.mkfifo(project / file)
    with pytest.raises(SystemExit):
        plot_stage.main()
    error = capsys.readouterr().err
    assert error.startswith(f"error: {file}: is a named pipe (FIFO), not a regular file; ") and error.count("\n") == 1


def test_the_html_dvc_plots_writes_is_not_left_for_git_add(tmp_path):
    """`dvc plots show` (and `dvc plots diff main`, as the README suggests) write
    dvc_plots/index.html in the workspace: a `git add -A` after a run committed it."""
    import shutil
    import subprocess

    shutil.copy(Path(__file__).resolve().parent.parent / ".gitignore", tmp_path / ".gitignore")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "dvc_plots").mkdir()
    (tmp_path / "dvc_plots" / "index.html").write_text("<html></html>")
    ignored = subprocess.run(["git", "-C", str(tmp_path), "check-ignore", "-q", "dvc_plots/index.html"])
    assert ignored.returncode == 0


def test_class_and_file_names_with_dollar_signs_are_drawn_as_written(project):
    """Two `$` in a label made matplotlib parse it as TeX math: classes `$1` and `$5` (coins),
    or a file `a$\\foo$.png`, ended the stage in a ParseFatalException after writing a PNG."""
    classes = ["$1", "$5", "a$\\foo$b", "d"]
    confusion = plot_stage.confusion_figure(np.arange(16).reshape(4, 4), classes)
    assert [label.get_text() for label in confusion.axes[0].get_xticklabels()] == classes
    mistakes = plot_stage.misclassified_figure(np.zeros((4, 3, 8, 8), np.uint8), np.arange(4),
                                               np.array([1, 0, 3, 2]), classes, 4, ["$x$.png"] * 4)
    for figure in (confusion, mistakes):
        assert plot_stage.png_bytes(figure).startswith(b"\x89PNG")
    assert "true: $1\npred: $5" in [text.get_text() for text in mistakes.axes[0].texts][0]

    csv_path = project / "metrics" / "predictions.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([lines[0] + ",path"] + [f"{line},a$\\foo${i}.png" for i, line in
                                                          enumerate(lines[1:])]) + "\n")
    plot_stage.main()
    assert len(list((project / "metrics" / "plots").iterdir())) == 3


def test_a_figure_that_fails_to_draw_leaves_the_old_plots_as_they_were(project, monkeypatch):
    """matplotlib draws a figure only when it is saved: every PNG is drawn before any is written."""
    plot_stage.main()
    before = {path.name: path.read_bytes() for path in (project / "metrics" / "plots").iterdir()}

    def failing(*args, **kwargs):
        figure = plot_stage.Figure()
        figure.add_subplot().set_title("x")
        monkeypatch.setattr(figure, "savefig", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("draw")))
        return figure

    monkeypatch.setattr(plot_stage, "misclassified_figure", failing)
    monkeypatch.setattr(plot_stage, "confusion_figure", lambda counts, classes: plot_stage.Figure(figsize=(2, 2)))
    with pytest.raises(RuntimeError, match="draw"):
        plot_stage.main()
    assert {path.name: path.read_bytes() for path in (project / "metrics" / "plots").iterdir()} == before
