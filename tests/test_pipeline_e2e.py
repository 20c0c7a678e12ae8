"""End to end: the real DVC pipeline in a temporary repository.

A generated CIFAR-10-format archive is served from 127.0.0.1; `dvc repro` runs
all six stages with a small spec for one epoch; then an experiment with another
batch size re-runs only resolve, train, evaluate and plot.
"""
import hashlib
import json
import re
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from tests.fakedata import make_cifar10_archive, serve_folder
from tests.pipeline_repo import STAGES, copy_checkout, quick_training, ran_stages, run

TINY_SPEC = """\
name: e2e_tiny
description: a small CNN for the end-to-end test
layers:
  - conv: {filters: 16, kernel: 3, bias: false}
  - bn
  - activation: relu
  - max_pool: 2
  - conv: {filters: 32, kernel: 3, bias: false}
  - bn
  - activation: relu
  - global_avg_pool
  - dense: {units: num_classes}
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory):
    served = tmp_path_factory.mktemp("mirror")
    archive = make_cifar10_archive(served / "cifar-10-python.tar.gz", n_train_per_class=60,
                                   n_test_per_class=20, seed=0)
    md5 = hashlib.md5(Path(archive).read_bytes()).hexdigest()
    repo = tmp_path_factory.mktemp("repo")
    copy_checkout(repo)
    (repo / "specs" / "e2e_tiny.yaml").write_text(TINY_SPEC)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    with serve_folder(served) as base_url:
        params["data"].update(url=f"{base_url}/cifar-10-python.tar.gz", md5=md5, val_split=0.1)
        params["model"]["spec"] = "specs/e2e_tiny.yaml"
        quick_training(params)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run(["git", "add", "-A"], repo)
        run(["git", "commit", "-qm", "small e2e params"], repo)
        first = run(["dvc", "repro"], repo, timeout=600)
        yield repo, first, base_url


def test_repro_runs_every_stage_and_learns(pipeline_repo):
    repo, output, _ = pipeline_repo
    assert ran_stages(output) == STAGES
    metrics = json.loads((repo / "metrics" / "eval.json").read_text())
    assert metrics["accuracy"] > 0.2, metrics  # 10 classes: chance is 0.1
    trained = re.search(r"trained \d+ epochs? on cpu: .*; first step [\d.]+s(.*), rest [\d.]+s; wrote models/model.pt",
                        output)
    assert trained and trained.group(1) == ""  # train.compile is off: the first step holds no compile
    assert metrics["loss"] > 0


def test_a_second_repro_finds_nothing_to_run(pipeline_repo):
    """The stages import cnnspec/, and Python writes its bytecode caches there: DVC must
    not count them as a change of that dependency (.dvcignore), or the next `dvc repro`
    retrains the model."""
    repo, _, _ = pipeline_repo
    assert list((repo / "cnnspec").rglob("__pycache__/*.pyc"))
    assert "Data and pipelines are up to date" in run(["dvc", "status", "dvc.yaml"], repo)


def test_repro_writes_sensible_pngs(pipeline_repo):
    repo, _, _ = pipeline_repo
    pngs = sorted((repo / "metrics" / "plots").glob("*.png"))
    assert {p.name for p in pngs} >= {"confusion_matrix.png", "learning_curves.png", "misclassified.png"}
    for png in pngs:
        height, width = matplotlib.image.imread(png).shape[:2]
        assert 300 <= width <= 4000 and 200 <= height <= 4000, (png.name, width, height)


def test_checkpoint_reloads_and_reproduces_accuracy(pipeline_repo):
    import torch

    from cnnspec.data.datasets import load_prepared
    from cnnspec.models.checkpoint import load_network

    repo, _, _ = pipeline_repo
    model, checkpoint = load_network(repo / "models" / "model.pt", device="cpu")
    raw = torch.load(repo / "models" / "model.pt", weights_only=True)
    assert raw["classes"] == checkpoint["classes"]
    data = load_prepared(repo / "data" / "prepared")
    images = torch.from_numpy(data["test_images"]).float() / 255
    mean = torch.tensor(checkpoint["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(checkpoint["std"]).view(1, -1, 1, 1)
    with torch.inference_mode():
        predictions = model.eval()((images - mean) / std).argmax(1)
    accuracy = (predictions == torch.from_numpy(data["test_labels"])).float().mean().item()
    evaluated = json.loads((repo / "metrics" / "eval.json").read_text())["accuracy"]
    assert accuracy == pytest.approx(evaluated, abs=1e-4)


def test_retraining_with_the_same_params_gives_byte_identical_eval_json(pipeline_repo):
    repo, _, _ = pipeline_repo
    before = (repo / "metrics" / "eval.json").read_bytes()
    output = run(["dvc", "repro", "--force", "--single-item", "train"], repo, timeout=600)
    output += run(["dvc", "repro", "--force", "--single-item", "evaluate"], repo, timeout=600)
    assert ran_stages(output) == ["train", "evaluate"]
    assert (repo / "metrics" / "eval.json").read_bytes() == before


def test_experiment_reruns_only_training_side_diffs_and_reads_well_in_120_columns(pipeline_repo):
    """A batch-size experiment re-runs only resolve, train, evaluate and plot; `dvc metrics
    diff` shows the old and new loss in a few rows; `cnnspec exps` (what `make exps` runs)
    shows the headline metrics and the one param set with -S, in 120 columns."""
    repo, _, _ = pipeline_repo
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "first results"], repo)
    before = json.loads((repo / "metrics" / "eval.json").read_text())
    output = run(["dvc", "exp", "run", "-S", "train.batch_size=32"], repo, timeout=600)
    assert ran_stages(output) == ["resolve", "train", "evaluate", "plot"]
    after = json.loads((repo / "metrics" / "eval.json").read_text())
    diff = run(["dvc", "metrics", "diff", "--json"], repo)
    changed = json.loads(diff)["metrics/eval.json"]
    assert changed["loss"]["old"] == pytest.approx(before["loss"])
    assert changed["loss"]["new"] == pytest.approx(after["loss"])
    assert before["loss"] != after["loss"]

    table = run(["python", "-m", "cnnspec.cli", "exps", "--width", "120"], repo)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 120, table
    assert lines[0].split()[:4] == ["experiment", "accuracy", "loss", "learned"], table
    experiment = [line for line in lines[2:] if "train.batch_size=32" in line]
    assert len(experiment) == 1 and "…" not in experiment[0], table
    # the JSON first; DVC may add a warning line on stderr after it (run joins both)
    rows, _ = json.JSONDecoder().raw_decode(run(["dvc", "metrics", "diff", "--json", "--all"], repo))
    assert sum(len(values) for values in rows.values()) <= 15, rows


def test_train_depends_on_the_spec_in_use_only(pipeline_repo):
    """resolve records the hash of the spec in use: an edit to another spec re-runs resolve
    (a second) and leaves train up to date; an edit to the one in use makes train stale."""
    repo, _, _ = pipeline_repo
    with open(repo / "specs" / "fan.yaml", "a") as spec:
        spec.write("# an edit to a spec that is not model.spec\n")
    assert ran_stages(run(["dvc", "repro", "resolve"], repo)) == ["resolve"]
    assert "Data and pipelines are up to date" in run(["dvc", "status", "train"], repo)
    with open(repo / "specs" / "e2e_tiny.yaml", "a") as spec:
        spec.write("# an edit to the spec in use\n")
    run(["dvc", "repro", "resolve"], repo)
    assert "params.resolved.yaml" in run(["dvc", "status", "train"], repo)
    run(["git", "checkout", "specs/"], repo)
    run(["dvc", "repro", "resolve"], repo)


def test_experiment_without_validation_split_trains_on_every_image(pipeline_repo):
    """data.val_split: 0 (airbench's protocol): preprocess keeps every training image, the
    train stage logs training curves only, and evaluate, plot and `dvc plots show` still work."""
    repo, _, _ = pipeline_repo
    output = run(["dvc", "exp", "run", "-S", "data.val_split=0"], repo, timeout=600)
    assert ran_stages(output) == ["preprocess", "resolve", "train", "evaluate", "plot"]
    assert "train accuracy" in output
    meta = json.loads((repo / "data" / "prepared" / "meta.json").read_text())
    assert meta["counts"]["val"] == 0 and meta["counts"]["train"] == 600
    logs = repo / "metrics" / "train" / "plots" / "metrics"
    assert (logs / "train" / "loss.tsv").is_file() and not (logs / "val").exists()
    assert json.loads((repo / "metrics" / "eval.json").read_text())["accuracy"] > 0.1
    assert (repo / "metrics" / "plots" / "learning_curves.png").is_file()
    shown = run(["dvc", "plots", "show", "--json"], repo)
    assert "learning_rate" in shown


def test_experiment_on_two_processes_runs_the_same_stages(pipeline_repo):
    """`dvc exp run -S train.devices=2` on a CPU-only machine: the train stage launches two
    gloo ranks through torchrun, and evaluate and plot read the checkpoint rank 0 wrote."""
    import torch

    repo, _, _ = pipeline_repo
    output = run(["dvc", "exp", "run", "-S", "train.devices=2"], repo, timeout=600)
    assert ran_stages(output)[:2] == ["resolve", "train"] and ran_stages(output)[-2:] == ["evaluate", "plot"]
    assert "launching 2 processes" in output and "on 2 processes (cpu, gloo)" in output
    state = torch.load(repo / "models" / "model.pt", weights_only=True)
    assert state["params"]["train"]["devices"] == 2
    assert not any(key.startswith("module.") for key in state["state_dict"])
    assert json.loads((repo / "metrics" / "eval.json").read_text())["accuracy"] > 0.1
