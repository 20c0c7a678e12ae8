"""Experiments side by side: `dvc exp run --queue` twice, then `dvc queue start -j 2`
runs both trainings at once, each in its own temporary workspace (.dvc/tmp/exps/).
Neither may read or overwrite the other's resume state, checkpoint or DVCLive logs,
nor the main workspace's, and both must land as experiments with their own metrics.
DVC's queue uses local celery workers: no network is needed."""
import csv
import io
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cnnspec.models.checkpoint import read_checkpoint
from tests.fakedata import make_mnist_folder
from tests.pipeline_repo import copy_checkout, run, user_environment

pytestmark = pytest.mark.slow

SPEC = """\
name: queue_tiny
layers:
  - conv: {filters: 4, kernel: 3}
  - global_avg_pool
  - dense: num_classes
"""
EXPERIMENTS = {"seed1": {"seed": 1, "epochs": 2}, "seed2": {"seed": 2, "epochs": 3}}
DECOY = b"the main workspace's own resume state; no experiment may touch it"


def git_show(repo: Path, rev: str, path: str) -> str:
    return run(["git", "show", f"{rev}:{path}"], repo)


def wait_for_queue(repo: Path, timeout: float = 300) -> int:
    """Wait until every queued experiment has its ref; returns the most temporary
    workspaces (.dvc/tmp/exps/tmp*, one per running experiment) seen at once. Polls
    cheap things often, and `dvc queue status` (a second of CPU) only now and then, to
    notice a failed task."""
    most_workspaces, deadline, next_status = 0, time.monotonic() + timeout, time.monotonic() + 10
    while time.monotonic() < deadline:
        workspaces = list((repo / ".dvc" / "tmp" / "exps").glob("tmp*"))
        most_workspaces = max(most_workspaces, len(workspaces))
        refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).split()
        if {ref.rsplit("/", 1)[-1] for ref in refs} >= set(EXPERIMENTS) and not workspaces:
            return most_workspaces
        if time.monotonic() > next_status:
            status = run(["dvc", "queue", "status"], repo)
            assert "Failed" not in status, status
            next_status = time.monotonic() + 10
        time.sleep(0.3)
    raise AssertionError(f"the queue did not finish in {timeout} s:\n{run(['dvc', 'queue', 'status'], repo)}")


@pytest.fixture(scope="module")
def queued_repo(tmp_path_factory):
    mirror = tmp_path_factory.mktemp("mirror")
    # enough images that each experiment trains for a few seconds: the two overlap even
    # when the second queue worker starts late on a busy machine
    sums = make_mnist_folder(mirror, n_train_per_class=400, n_test_per_class=2)
    repo = tmp_path_factory.mktemp("repo")
    copy_checkout(repo)
    (repo / "specs" / "queue_tiny.yaml").write_text(SPEC)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(dataset="mnist", url=mirror.as_uri() + "/", md5=sums, val_split=0.25)
    params["model"]["spec"] = "specs/queue_tiny.yaml"
    params["train"].update(device="cpu", epochs=1, batch_size=8, precision="off")
    params["train"]["optimizer"].update(name="adam", lr=0.003, weight_decay=0.0)
    params["train"]["scheduler"]["name"] = "none"
    params["train"]["lookahead"]["enabled"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny queue params"], repo)
    run(["dvc", "repro", "preprocess"], repo, timeout=300)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "prepared"], repo)
    decoy = repo / "models" / "resume" / "state.pt"
    decoy.parent.mkdir(parents=True)
    decoy.write_bytes(DECOY)

    for name, options in EXPERIMENTS.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.seed={options['seed']}",
             "-S", f"train.epochs={options['epochs']}", "train"], repo)
    # The workers it starts keep its stdout: capturing that would wait for them to exit.
    with open(repo.parent / "queue-start.log", "w") as log:
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, stdout=log,
                       stderr=subprocess.STDOUT, env=user_environment(), check=True, timeout=120)
    most_workspaces = wait_for_queue(repo)
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True,
                           text=True, check=True, env=user_environment())
    experiments = {}
    for commit in json.loads(shown.stdout):
        for experiment in commit.get("experiments") or []:
            for rev in experiment["revs"]:
                experiments[rev["name"]] = rev
    return repo, experiments, most_workspaces


def test_both_experiments_land_with_their_own_params_and_metrics(queued_repo):
    repo, experiments, most_workspaces = queued_repo
    assert most_workspaces == 2  # side by side in two workspaces, not one after the other
    assert set(experiments) >= set(EXPERIMENTS), sorted(experiments)
    for name, options in EXPERIMENTS.items():
        data = experiments[name]["data"]
        assert experiments[name]["error"] is None
        train = data["params"]["params.yaml"]["data"]["train"]
        assert (train["seed"], train["epochs"]) == (options["seed"], options["epochs"])
        metrics = data["metrics"]["metrics/train/metrics.json"]["data"]
        assert metrics["step"] == options["epochs"] - 1  # its own number of epochs, not the other's
        assert 0 <= metrics["val"]["accuracy"] <= 1


def test_each_experiment_has_its_own_checkpoint_and_training_log(queued_repo):
    repo, experiments, _ = queued_repo
    checkpoints = {}
    for name, options in EXPERIMENTS.items():
        rev = experiments[name]["rev"]
        lock = yaml.safe_load(git_show(repo, rev, "dvc.lock"))
        (out,) = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/model.pt"]
        md5 = out["md5"]
        checkpoint = read_checkpoint(repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:])
        assert checkpoint["params"]["train"]["seed"] == options["seed"]
        assert checkpoint["epoch"] == options["epochs"] - 1
        checkpoints[name] = md5
        # DVCLive's per-epoch rows: exactly this run's epochs, steps 0, 1, ... once each
        for series in ("train/loss.tsv", "val/accuracy.tsv", "lr.tsv"):
            rows = list(csv.DictReader(io.StringIO(
                git_show(repo, rev, f"metrics/train/plots/metrics/{series}")), delimiter="\t"))
            assert [int(row["step"]) for row in rows] == list(range(options["epochs"])), (name, series)
    assert len(set(checkpoints.values())) == len(EXPERIMENTS)


def test_neither_experiment_saw_a_resume_state_but_its_own(queued_repo):
    repo, _, _ = queued_repo
    for name in EXPERIMENTS:
        log = run(["dvc", "queue", "logs", name], repo)
        assert "Running stage 'train'" in log
        for sign in ("resuming from", "ignoring", "damaged"):
            assert sign not in log, (name, sign, log)
    # the main workspace's resume state is untouched, and nothing was left beside it
    resume = repo / "models" / "resume"
    assert sorted(p.name for p in resume.iterdir()) == ["state.pt"]
    assert (resume / "state.pt").read_bytes() == DECOY
    leftover = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True)
    assert leftover.stdout == ""
