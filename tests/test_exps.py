"""`cnnspec exps` and `make exps`: every experiment in one table that fits 120 columns,
with the params it set, without making or reinstalling a venv."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnnspec.pipeline.experiments import render, rows

REPO_ROOT = Path(__file__).resolve().parent.parent


def commit(rev, name, params, accuracy, experiments=()):
    return {"rev": rev, "name": name, "error": None,
            "data": {"params": {"params.yaml": {"data": params},
                                "params.resolved.yaml": {"data": {"train": {"lr": 0.1}}}},
                     "metrics": {"metrics/eval.json": {"data": {"accuracy": accuracy, "loss": 0.5,
                                                                "learned": True}}}},
            "experiments": list(experiments)}


def experiment(name, params, accuracy, error=None):
    return {"name": name, "executor": None,
            "revs": [{"rev": name * 3, "name": name, "error": error,
                      "data": {"params": {"params.yaml": {"data": params}},
                               "metrics": {"metrics/eval.json": {"data": {"accuracy": accuracy, "loss": 0.4,
                                                                          "learned": accuracy is not None
                                                                                      and accuracy > 0.2}}}}}]}


BASE = {"data": {"dataset": "cifar10", "source": "data/raw", "image_size": "auto"},
        "model": {"spec": "auto"}, "train": {"batch_size": None, "epochs": None, "seed": 0}}


def own_data_runs(count=11):
    """Experiments that each change many params, as a few own-data runs do."""
    runs = []
    for index in range(count):
        params = {"data": {"dataset": "folder", "source": f"data/my_images_{index}",
                           "image_size": [8 + index, 8 + index]},
                  "model": {"spec": "specs/small_images.yaml"},
                  "train": {"batch_size": 16 * (index + 1), "epochs": index + 1, "seed": index}}
        runs.append(experiment(f"exp-{index:02d}", params, 0.5 + index / 100))
    return [{"rev": "workspace", "name": None, "data": {}, "error": None, "experiments": None},
            commit("a1b2c3d4e5f6", "main", BASE, 0.9, runs)]


def test_every_experiment_is_listed_within_120_columns():
    table = render(own_data_runs(), width=120)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 120, table
    assert len(lines) == 1 + 1 + 11  # header, the baseline, eleven experiments
    assert lines[1].startswith("main (a1b2c3d)")
    names = [line.split()[0] for line in lines[2:]]
    assert sorted(names) == [f"exp-{index:02d}" for index in range(11)]
    assert names[0] == "exp-10"  # best accuracy first


def test_a_row_shows_the_params_set_with_minus_s_and_the_headline_metrics():
    table = render(own_data_runs(2), width=200)
    row = [line for line in table.splitlines() if line.strip().startswith("exp-01")][0]
    assert "0.5100" in row and "0.4000" in row and "true" in row
    assert "data.dataset=folder" in row and "train.batch_size=32" in row and "data.image_size=[9,9]" in row
    assert "train.lr" not in row  # params.resolved.yaml is not what -S set


def test_failed_experiments_and_missing_metrics_are_shown_not_dropped():
    show = [commit("a1b2c3d4e5f6", None, BASE, None,
                   [experiment("broken", {**BASE, "train": {**BASE["train"], "epochs": 0}}, None, error={"msg": "x"})])]
    show[0]["data"]["metrics"] = {}
    table = render(show, width=120)
    assert "a1b2c3d" in table and "broken" in table and "(failed) train.epochs=0" in table
    assert rows(show)[1]["metrics"] == {}  # the commit's files, not the failed run's: none shown


def test_the_workspace_is_a_row_when_its_results_are_not_its_commits():
    """After a `dvc repro` not committed yet: its scores and what it changed, first."""
    show = own_data_runs(1)
    show[0]["data"] = {"params": {"params.yaml": {"data": {**BASE, "train": {**BASE["train"], "epochs": 3}}}},
                       "metrics": {"metrics/eval.json": {"data": {"accuracy": 0.575, "loss": 1.2, "learned": True}}}}
    lines = render(show, width=120).splitlines()
    assert lines[1].startswith("workspace") and "0.5750" in lines[1] and "train.epochs=3" in lines[1]
    assert lines[2].startswith("main (a1b2c3d)")
    show[0]["data"] = show[1]["data"]  # the workspace holds its commit's results: no row of its own
    assert not render(show, width=120).splitlines()[1].startswith("workspace")


def test_hostile_metrics_and_params_print_on_their_line_and_sort_last():
    """An experiment's files are anyone's text: a 400-digit accuracy, a param holding
    terminal escapes and a line break."""
    show = own_data_runs(2)
    huge = show[1]["experiments"][0]["revs"][0]["data"]
    huge["metrics"]["metrics/eval.json"]["data"]["accuracy"] = 10 ** 400
    huge["params"]["params.yaml"]["data"]["train"]["note"] = "x\x1b[2J\x1b]0;t\x07\nfake row"
    table = render(show, width=400)
    assert "\x1b" not in table and "\x07" not in table
    lines = table.splitlines()
    assert len(lines) == 4 and lines[-1].lstrip().startswith("exp-00")  # sorted last, no extra line
    assert "train.note=x\\x1b[2J\\x1b]0;t\\x07\\nfake row" in lines[-1]


def test_no_experiments_says_how_to_run_one():
    assert "dvc exp run" in render([], width=80)


def make_dry_run(folder: Path, env: dict) -> str:
    result = subprocess.run(["make", "-n", "exps"], cwd=folder, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_exps_uses_an_active_or_present_venv_without_installing(tmp_path):
    shutil.copy(REPO_ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")  # newer than any .installed stamp
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    active = make_dry_run(tmp_path, {**env, "VIRTUAL_ENV": "/opt/my-venv"})
    assert "pip" not in active and "venv" not in active.replace("/opt/my-venv", "")
    assert "/opt/my-venv/bin" in active and "cnnspec exps" in active
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "cnnspec").write_text("")
    present = make_dry_run(tmp_path, env)
    assert "pip" not in present and "python3 -m venv" not in present and "cnnspec exps" in present
    shutil.rmtree(tmp_path / ".venv")
    assert "python3 -m venv" in make_dry_run(tmp_path, env)  # none at all: make one


@pytest.mark.parametrize("state", ["queued", "running", "failed"])
def test_an_experiment_that_has_not_finished_shows_no_metrics_of_its_own(state):
    # DVC gives an unfinished experiment the files of the commit it started from, so its
    # metrics are the baseline's: showing them would rank it as if it had scored them.
    waiting = experiment("waiting", {**BASE, "train": {**BASE["train"], "epochs": 3}}, 0.9)
    waiting["executor"] = {"state": state, "name": "dvc-task", "local": None}
    done = experiment("done", {**BASE, "train": {**BASE["train"], "epochs": 2}}, 0.5)
    done["executor"] = {"state": "success", "name": "dvc-task", "local": None}
    show = [commit("a1b2c3d4e5f6", "main", BASE, 0.9, [waiting, done])]
    table = render(show, width=120).splitlines()
    assert [line.split()[0] for line in table[2:]] == ["done", "waiting"]  # the finished run first
    row = table[3]
    assert f"({state}) train.epochs=3" in row
    assert "0.9000" not in row and row.split()[1:4] == ["-", "-", "-"]
    assert "0.5000" in table[2] and "(" not in table[2]


def test_exps_refuses_a_width_too_narrow_for_its_columns():
    result = subprocess.run([sys.executable, "-m", "cnnspec.cli", "exps", "--width", "-5"],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --width: expected a number >= 60, not -5"


def test_a_nan_accuracy_sorts_last_and_leaves_the_others_best_first():
    """NaN compares false with everything: as a sort key it would leave the rows unsorted."""
    show = own_data_runs(4)
    show[1]["experiments"][1]["revs"][0]["data"]["metrics"]["metrics/eval.json"]["data"]["accuracy"] = float("nan")
    names = [line.split()[0] for line in render(show, width=120).splitlines()[2:]]
    assert names == ["exp-03", "exp-02", "exp-00", "exp-01"]


@pytest.mark.parametrize("name, make, words", [
    ("params.yaml", os.mkfifo, "params.yaml: a named pipe (FIFO), not a regular file; DVC would block"),
    ("metrics/eval.json", lambda path: path.symlink_to("/dev/zero"),
     "metrics/eval.json: a character device, not a regular file; DVC would block"),
], ids=["fifo", "dev-zero"])
def test_a_workspace_file_dvc_would_never_finish_reading_is_named_before_dvc_runs(tmp_path, monkeypatch,
                                                                                   name, make, words):
    """`dvc exp show` opens params.yaml and the metrics as they are: a FIFO hung `cnnspec exps` for
    good, a link to /dev/zero had DVC fill the memory until the kernel killed it."""
    from cnnspec.errors import CnnspecError
    from cnnspec.pipeline import experiments

    (tmp_path / "metrics").mkdir()
    make(tmp_path / name)
    monkeypatch.setattr(experiments.subprocess, "run", lambda *args, **kwargs: pytest.fail("dvc ran"))
    with pytest.raises(CnnspecError) as refused:
        experiments.exp_show_json(tmp_path)
    assert str(refused.value).startswith(words)


def test_a_dvc_that_never_answers_is_stopped_with_one_line(tmp_path, monkeypatch):
    from cnnspec.errors import CnnspecError
    from cnnspec.pipeline import experiments

    def hangs(command, **kwargs):
        assert kwargs["timeout"] == experiments.DVC_TIMEOUT
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(experiments.subprocess, "run", hangs)
    with pytest.raises(CnnspecError, match=r"^dvc exp show --json: no answer after 300 s; stopped$"):
        experiments.exp_show_json(tmp_path)
