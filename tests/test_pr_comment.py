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
