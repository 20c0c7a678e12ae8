"""scripts/pr_comment.py on a real, temporary git + DVC repository with two commits."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import pr_comment

REPO_ROOT = Path(__file__).resolve().parent.parent

DVC_YAML = """\
stages:
  evaluate:
    cmd: python stages/evaluate.py
    params:
      - evaluate
      - train.batch_size
    metrics:
      - metrics/eval.json:
          cache: false
"""


def git(repo, *arguments):
    subprocess.run(["git", *arguments], cwd=repo, check=True, capture_output=True)


def commit_results(repo, batch_size, tta, accuracy, loss, message):
    (repo / "params.yaml").write_text(f"train:\n  batch_size: {batch_size}\nevaluate:\n  tta: {tta}\n")
    (repo / "metrics" / "eval.json").write_text(json.dumps(
        {"accuracy": accuracy, "loss": loss, "confusion_matrix": [[5, 1], [2, 4]]}))
    git(repo, "add", "params.yaml", "metrics/eval.json")
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """main: batch 64, accuracy 0.6125; branch pr: batch 256, accuracy 0.7375, same loss."""
    repo = tmp_path_factory.mktemp("pr_repo")
    git(repo, "init", "-q", "-b", "main")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    (repo / "metrics").mkdir()
    (repo / "dvc.yaml").write_text(DVC_YAML)
    git(repo, "add", "dvc.yaml", ".dvc")
    commit_results(repo, 64, "none", 0.6125, 1.0432, "base")
    git(repo, "checkout", "-q", "-b", "pr")
    commit_results(repo, 256, "none", 0.7375, 1.0432, "bigger batches")
    return repo


def test_comment_shows_both_values_of_the_changed_metric_and_param(repo, tmp_path):
    output = tmp_path / "comment.md"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "pr_comment.py"),
                             "--base", "main", "--head", "pr", "--output", str(output)],
                            cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    comment = output.read_text()
    assert "`main` → `pr`" in comment

    metrics = comment.split("### Metrics")[1].split("### Params")[0]
    accuracy_row = next(line for line in metrics.splitlines() if "| accuracy " in line)
    assert "0.6125" in accuracy_row and "0.7375" in accuracy_row
    assert "| loss " not in metrics  # unchanged metrics are left out

    params = comment.split("### Params")[1]
    batch_row = next(line for line in params.splitlines() if "train.batch_size" in line)
    assert "| 64 " in batch_row and "| 256 " in batch_row
    assert "evaluate.tta" not in params


def test_no_difference_reads_no_changes(repo):
    comment = pr_comment.build_comment("pr", cwd=repo)  # the pr commit against its own workspace
    assert "`pr` → `workspace`" in comment
    assert comment.count("no changes") == 2
    assert "| accuracy" not in comment


def test_unknown_base_is_one_line_naming_it(repo):
    with pytest.raises(pr_comment.DvcDiffError) as caught:
        pr_comment.build_comment("no-such-branch", cwd=repo)
    assert "no-such-branch" in str(caught.value) and "\n" not in str(caught.value)


def test_an_empty_table_has_no_rows():
    empty = "| Path   | Metric   | HEAD   | workspace   | Change   |\n|--------|----------|\n"
    assert pr_comment.table_rows(empty) == []
    assert pr_comment.diff_section("Metrics", empty) == "### Metrics\n\nno changes\n"


def test_a_pull_requests_own_values_cannot_add_lines_links_or_html_to_the_comment():
    """A metric or a param is the pull request author's text: it stays inside its cell."""
    hostile = "x\n\n## Hijacked\n<img src=https://example.invalid/a.png>\n[click](https://example.invalid) @octocat"
    metrics = {"metrics/eval.json": {"loss": {"old": 1.0, "new": hostile, "diff": None},
                                     "a|b": {"old": 0.5, "new": 0.75, "diff": 0.25}}}
    table = pr_comment.metrics_table(metrics, "main", "pr")
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, two rows: nothing added a line
    row = next(line for line in lines if line.startswith("| loss"))
    assert "` x\\n\\n## Hijacked\\n<img src=https://example.invalid/a.png>\\n[click](https://example.invalid) " \
           "@octocat `" in row  # one code span: no heading, image, link or mention renders
    assert "| ` a\\|b ` | 0.5 | 0.75 | +0.25 |" in lines
    assert pr_comment.cell("train.batch_size") == "train.batch_size"  # plain names stay plain
    assert pr_comment.cell("https://example.invalid/x") == "` https://example.invalid/x `"  # no bare link


REALISTIC_DVC_YAML = """\
stages:
  resolve:
    cmd: python stages/resolve.py
    params: [recipe, model, train]
    outs:
      - params.resolved.yaml: {cache: false}
  evaluate:
    cmd: python stages/evaluate.py
    params:
      - params.resolved.yaml: [recipe, model, train]
    metrics:
      - metrics/eval.json: {cache: false}
      - metrics/train/metrics.json: {cache: false}
"""


def commit_run(repo, spec, recipe, batch_size, lr, headline, message):
    (repo / "params.yaml").write_text(f"recipe: auto\nmodel:\n  spec: {spec}\n"
                                      "train:\n  batch_size: ~\n  optimizer:\n    lr: ~\n")
    (repo / "params.resolved.yaml").write_text(
        f"recipe: {recipe}\nmodel:\n  spec: {spec}\ntrain:\n  batch_size: {batch_size}\n  optimizer:\n    lr: {lr}\n")
    (repo / "metrics" / "eval.json").write_text(json.dumps(headline))
    (repo / "metrics" / "train").mkdir(parents=True, exist_ok=True)
    (repo / "metrics" / "train" / "metrics.json").write_text(json.dumps(
        {"train": {"loss": headline["loss"], "learned": headline["learned"]}, "step": 9}))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture(scope="module")
def realistic_repo(tmp_path_factory):
    """main: speedrun94 with airbench; pr: switches to simcnn and keeps airbench's lr by
    mistake, so it ends at chance level."""
    repo = tmp_path_factory.mktemp("realistic")
    git(repo, "init", "-q", "-b", "main")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    (repo / "metrics").mkdir()
    (repo / "dvc.yaml").write_text(REALISTIC_DVC_YAML)
    commit_run(repo, "specs/speedrun94.yaml", "airbench", 1024, 1.5,
               {"accuracy": 0.9401, "top5_accuracy": 0.9981, "loss": 0.6502, "macro_f1": 0.9398,
                "learned": True}, "base")
    git(repo, "checkout", "-q", "-b", "pr")
    commit_run(repo, "specs/simcnn.yaml", "airbench", 1024, 1.5,
               {"accuracy": 0.1, "top5_accuracy": 0.5, "loss": 2.3026, "macro_f1": 0.0182,
                "learned": False}, "simcnn")
    return repo


def test_realistic_comment_shows_the_headline_once_per_param_and_the_warning(realistic_repo):
    comment = pr_comment.build_comment("main", "pr", cwd=realistic_repo, smoke=True,
                                       plots_url="https://ci.example/run/1")
    metrics = comment.split("### Metrics")[1].split("### Params")[0]
    rows = pr_comment.table_rows(metrics)
    assert {row.split("|")[1].strip() for row in rows} == {"accuracy", "top5_accuracy", "loss", "macro_f1", "learned"}
    accuracy = next(row for row in rows if row.startswith("| accuracy "))
    assert "0.9401" in accuracy and "0.1" in accuracy and "-0.8401" in accuracy
    assert "step" not in metrics  # only the headline file, not the training log's metrics

    params = pr_comment.table_rows(comment.split("### Params")[1].split("### Plots")[0])
    assert [row.split("|")[1].strip() for row in params] == ["model.spec"]  # once, not per file
    assert "specs/speedrun94.yaml" in params[0] and "specs/simcnn.yaml" in params[0]

    assert "**Smoke run.**" in comment and "**Warning: this run did not learn**" in comment
    assert "[plots diff against `main`](https://ci.example/run/1)" in comment


def test_a_run_that_learned_has_no_warning(realistic_repo):
    comment = pr_comment.build_comment("pr", "main", cwd=realistic_repo)
    assert "did not learn" not in comment and "Smoke run" not in comment and "### Plots" not in comment


def test_the_workflow_runs_the_smoke_recipe_only_without_real_results(tmp_path):
    import yaml

    from cnnspec.pipeline.params import load_params

    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "pr.yml").read_text())
    steps = {step.get("name"): step for step in workflow["jobs"]["metrics-diff"]["steps"]}
    results = steps["Pull the real results, or run the smoke recipe"]["run"]
    assert "dvc pull --run-cache" in results and "dvc exp run -S recipe=smoke" in results
    assert "dvc repro\n" not in results  # never the full recipe on the CPU runner
    assert "--smoke" in steps["Write the comment"]["run"] and "--plots-url" in steps["Write the comment"]["run"]
    # A smoke run is compared with the base's smoke run, never with the base's real results,
    # and the params diff holds the pull request's changes, not the smoke recipe's.
    assert "dvc exp run --temp -S recipe=smoke -n smoke-base" in results
    assert "base=smoke-base" in results and "base=origin/" in results
    for step in ("Plots diff", "Write the comment"):
        assert "${{ steps.results.outputs.base }}" in steps[step]["run"]
        assert "github.base_ref" not in steps[step]["run"]
    text = (REPO_ROOT / "params.yaml").read_text().replace("recipe: auto", "recipe: smoke")
    (tmp_path / "params.yaml").write_text(text)
    params = load_params(tmp_path / "params.yaml")
    assert params["train"]["epochs"] == 1 and params["evaluate"]["tta"] == "none"


def test_params_that_differ_never_look_the_same():
    """A param is shown as written: rounding would make 0.0010001 and 0.001 one value."""
    diff = {"params.yaml": {"train.optimizer.lr": {"old": 0.0010001, "new": 0.001},
                            "train.optimizer.weight_decay": {"old": 5e-05, "new": 0.000123456}}}
    rows = pr_comment.table_rows(pr_comment.params_table(diff, "main", "pr"))
    assert rows == ["| train.optimizer.lr | 0.0010001 | 0.001 |",
                    "| train.optimizer.weight_decay | 5e-05 | 0.000123456 |"]



def test_a_changed_spec_hash_reads_as_twelve_digits():
    old, new = "0f" * 32, "a1" * 32
    diff = {"params.resolved.yaml": {"model.spec_sha256": {"old": old, "new": new}},
            "params.yaml": {"model.spec": {"old": "specs/a.yaml", "new": "specs/b.yaml"}}}
    rows = pr_comment.table_rows(pr_comment.params_table(diff, "main", "pr"))
    assert rows == ["| model.spec_sha256 | 0f0f0f0f0f0f | a1a1a1a1a1a1 |",
                    "| model.spec | specs/a.yaml | specs/b.yaml |"]

def test_each_change_says_whether_the_model_got_better_or_worse():
    """Signed, with the direction each headline metric improves in: loss falls, the rest rise;
    a metric on one side only, a NaN and `learned` read as words, not as `-` or -1."""
    diff = {"metrics/eval.json": {
        "accuracy": {"old": 0.6125, "new": 0.7375, "diff": 0.125},
        "loss": {"old": 1.0432, "new": 1.2, "diff": 0.1568},
        "macro_f1": {"old": 0.6, "new": float("nan"), "diff": float("nan")},
        "top5_accuracy": {"old": None, "new": 0.99},
        "custom": {"old": 3, "new": 1, "diff": -2},
        "learned": {"old": True, "new": False, "diff": -1},
        "old_metric": {"old": 0.5, "new": None}}}
    rows = {row.split("|")[1].strip(): row for row in pr_comment.table_rows(
        pr_comment.metrics_table(diff, "main", "pr"))}
    assert rows["accuracy"] == "| accuracy | 0.6125 | 0.7375 | +0.125 (better) |"
    assert rows["loss"] == "| loss | 1.043 | 1.2 | +0.1568 (worse) |"
    assert rows["macro_f1"] == "| macro_f1 | 0.6 | NaN | NaN |"
    assert rows["top5_accuracy"] == "| top5_accuracy | - | 0.99 | new |"
    assert rows["custom"] == "| custom | 3 | 1 | -2 |"  # no known direction: no verdict
    assert rows["learned"] == "| learned | true | false | worse |"
    assert rows["old_metric"] == "| old_metric | 0.5 | - | missing |"


def test_a_head_without_metrics_says_so(realistic_repo):
    """A run that failed, or whose results were not committed, has no metrics/eval.json:
    the comment says so at the top instead of a table of dashes."""
    git(realistic_repo, "checkout", "-q", "-b", "no-results", "pr")
    git(realistic_repo, "rm", "-q", "metrics/eval.json")
    git(realistic_repo, "commit", "-q", "-m", "results not committed")
    git(realistic_repo, "checkout", "-q", "pr")
    comment = pr_comment.build_comment("main", "no-results", cwd=realistic_repo)
    assert "**No metrics for `no-results`**" in comment
    assert "did not learn" not in comment
    assert "| accuracy | 0.9401 | - | missing |" in comment


EXPERIMENT_DVC_YAML = """\
stages:
  evaluate:
    cmd: python evaluate.py
    params: [train.lr]
    metrics:
      - metrics/eval.json: {cache: false}
"""

EVALUATE = """\
import json, yaml
lr = yaml.safe_load(open("params.yaml"))["train"]["lr"]
learned = lr < 1
json.dump({"accuracy": 0.8 if learned else 0.1, "loss": 0.5 if learned else 2.3, "learned": learned},
          open("metrics/eval.json", "w"))
"""


def test_an_experiment_can_be_the_head_of_the_comparison(tmp_path):
    """`--head` names a DVC experiment as well as a commit: its metrics, params and
    did-not-learn warning come from the experiment (a ref git show cannot read)."""
    repo = tmp_path
    git(repo, "init", "-q", "-b", "main")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    (repo / "metrics").mkdir()
    (repo / "dvc.yaml").write_text(EXPERIMENT_DVC_YAML)
    (repo / "evaluate.py").write_text(EVALUATE)
    (repo / "params.yaml").write_text("train:\n  lr: 0.1\n")
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=repo, check=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-q", "-n", "too-fast", "-S", "train.lr=10"],
                   cwd=repo, check=True, capture_output=True)
    git(repo, "checkout", "-q", "--", ".")
    comment = pr_comment.build_comment("main", "too-fast", cwd=repo)
    assert "| accuracy | 0.8 | 0.1 | -0.7 (worse) |" in comment
    assert "| train.lr | 0.1 | 10 |" in comment
    assert "**Warning: this run did not learn**" in comment


def test_an_unreadable_headline_reads_as_no_metrics(realistic_repo):
    headline = realistic_repo / "metrics" / "eval.json"
    headline.write_text("[" * 100_000)  # nested too deep: no headline, no traceback
    try:
        comment = pr_comment.build_comment("main", cwd=realistic_repo)
    finally:
        git(realistic_repo, "checkout", "-q", "--", "metrics/eval.json")
    assert "**No metrics for `workspace`**" in comment


def test_a_workspace_headline_dvc_would_block_on_is_named_before_dvc_runs(tmp_path, monkeypatch):
    """The workflow compares against the checked-out pull request: its metrics/eval.json made a
    link to /dev/zero had `dvc metrics diff` fill the memory (a FIFO blocks it for good)."""
    import os

    (tmp_path / "metrics").mkdir()
    os.mkfifo(tmp_path / "metrics" / "eval.json")
    monkeypatch.setattr(pr_comment.subprocess, "run", lambda *args, **kwargs: pytest.fail("dvc ran"))
    with pytest.raises(pr_comment.DvcDiffError, match=r"^metrics/eval.json: a named pipe \(FIFO\), not a regular "
                                                       "file; DVC would block or never finish reading it"):
        pr_comment.build_comment("main", cwd=tmp_path)

    def hangs(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    (tmp_path / "metrics" / "eval.json").unlink()
    monkeypatch.setattr(pr_comment.subprocess, "run", hangs)
    with pytest.raises(pr_comment.DvcDiffError, match="gave no answer after 600 s; stopped"):
        pr_comment.build_comment("main", cwd=tmp_path)
