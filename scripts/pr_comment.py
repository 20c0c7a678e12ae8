"""Write the pull-request comment: what changed in metrics and params against a base.

    python scripts/pr_comment.py --base origin/main                 # print the markdown
    python scripts/pr_comment.py --base origin/main --output pr.md  # or write it to a file
    python scripts/pr_comment.py --base origin/main --smoke --plots-url URL

It runs `dvc metrics diff <base> --json` on the headline file (metrics/eval.json:
accuracy, top-5, loss, macro F1, learned) and `dvc params diff <base> --json`
(against the workspace, or against `--head` when given) and writes each as a table;
a diff with no rows reads "no changes". Params appear once, with their effective
value (params.resolved.yaml) where the run has one. `--smoke` labels the results as
the CI smoke recipe's; a run that did not learn, or a head without metrics, gets a
warning at the top; `--base` and `--head` take experiment names too; `--plots-url`
links the plots diff. The workflow in .github/workflows/pr.yml posts the result.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python scripts/pr_comment.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnspec.atomic import write_text
from cnnspec.errors import CnnspecError, exit_on_user_error, on_one_line
from cnnspec.pipeline.dvc_runs import unreadable_for_dvc

MARKER = "<!-- cnnspec-pr-comment -->"  # lets a workflow find its earlier comment
HEADLINE = "metrics/eval.json"
RESOLVED = "params.resolved.yaml"
SMOKE_NOTE = ("> **Smoke run.** These results come from the `smoke` recipe (one short epoch "
              "on the CI runner's CPU), run on the base branch and on the PR, not from the recipe "
              "the PR trains with: they show that the pipeline runs and learns, not how good the "
              "model is. Real results appear here when the PR's outputs are pushed to the DVC "
              "remote (see docs/pull_requests.md).")


class DvcDiffError(CnnspecError):
    """dvc could not produce a diff (an unknown revision, not a DVC repository, ...)."""


DVC_TIMEOUT = 600  # seconds: a CI job that waits longer is stopped with one line, not by the runner


def run_dvc(arguments: list[str], cwd) -> str:
    command = [sys.executable, "-m", "dvc", *arguments]
    environment = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=environment,
                                timeout=DVC_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise DvcDiffError(f"`dvc {' '.join(arguments)}` gave no answer after {DVC_TIMEOUT} s; stopped") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        reason = lines[0] if lines else f"exit status {result.returncode}"
        raise DvcDiffError(f"`dvc {' '.join(arguments)}` failed: {reason}")
    return result.stdout


def dvc_json(arguments: list[str], cwd) -> dict:
    text = run_dvc(arguments, cwd).strip()
    try:
        return json.loads(text) if text else {}
    except (ValueError, RecursionError):
        raise DvcDiffError(f"`dvc {' '.join(arguments)}` did not print readable JSON") from None


def table_rows(markdown: str) -> list[str]:
    """The data rows of a markdown table (its header and |---| line left out)."""
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return rows[2:]


def diff_section(title: str, markdown: str) -> str:
    if not table_rows(markdown):
        return f"### {title}\n\nno changes\n"
    return f"### {title}\n\n{markdown.strip()}\n"


PLAIN = re.compile(r"[\w.,:/+=() -]*")  # names and values shown as they are; anything else as code
MAX_CELL = 120


def cell(value) -> str:
    """A table cell. A metric or a param comes from the pull request's own files: text that
    is not plain is shown as code, on one line and shortened, so no value can add lines,
    headings, links, images, HTML or @-mentions to the comment."""
    if value is None:
        return "-"
    text = on_one_line(str(value))
    text = text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…"
    if PLAIN.fullmatch(text) and "://" not in text and "www." not in text:  # GitHub links bare URLs
        return text
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}".replace("|", "\\|")


HIGHER_IS_BETTER = {"accuracy", "top5_accuracy", "macro_f1", "learned"}
LOWER_IS_BETTER = {"loss"}


def metric_value(value):
    """A metric rounded for reading (a param is shown as written: see `cell`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.4g}"
    return value


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def verdict(name: str, delta: float) -> str | None:
    """better or worse, for the headline metrics whose good direction is known."""
    if delta == 0 or name not in HIGHER_IS_BETTER | LOWER_IS_BETTER:
        return None
    return "better" if (delta > 0) == (name in HIGHER_IS_BETTER) else "worse"


def metric_change(name: str, old, new) -> str | None:
    """The change column: signed, with its verdict (`+0.125 (better)`); `new` or `missing`
    for a metric on one side only; `better`/`worse` alone for `learned`."""
    if old is None or new is None:
        return None if old is new else ("new" if old is None else "missing")
    if isinstance(old, bool) and isinstance(new, bool):
        return verdict(name, int(new) - int(old))
    if not (is_number(old) and is_number(new)):
        return None
    delta = new - old
    if math.isnan(delta):
        return "NaN"
    judged = verdict(name, delta)
    return f"{delta:+.4g}" + (f" ({judged})" if judged else "")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def metrics_table(diff: dict, base: str, head: str) -> str:
    """`dvc metrics diff --json` of the headline file as rows: metric, base, head, change."""
    rows = []
    for path in sorted(diff):
        for name, change in sorted(diff[path].items()):
            old, new = change.get("old"), change.get("new")
            rows.append([name, metric_value(old), metric_value(new), metric_change(name, old, new)])
    return markdown_table(["metric", base, head, "change"], rows)


def params_table(diff: dict, base: str, head: str) -> str:
    """`dvc params diff --json` as rows; a param the resolved file has is shown once,
    with its effective values (params.yaml holds `~` for what the recipe sets)."""
    resolved = diff.get(RESOLVED, {})
    rows = [[name, change.get("old"), change.get("new")] for name, change in sorted(resolved.items())]
    for path in sorted(p for p in diff if p != RESOLVED):
        for name, change in sorted(diff[path].items()):
            if name not in resolved:
                rows.append([name if path == "params.yaml" else f"{path}:{name}",
                             change.get("old"), change.get("new")])
    return markdown_table(["param", base, head], [[name, short_hash(old), short_hash(new)]
                                                  for name, old, new in rows])


def short_hash(value):
    """A SHA-256 (model.spec_sha256: the spec's text changed) as its first 12 digits, as
    git shows a commit: enough to tell two apart, short enough to read."""
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return value[:12]
    return value


def changed_only(diff: dict) -> dict:
    """`dvc metrics diff --all` without the metrics that are the same on both sides."""
    def same(change):
        old, new = change.get("old"), change.get("new")
        return old == new or (is_number(old) and is_number(new) and math.isnan(old) and math.isnan(new))
    return {path: {name: change for name, change in metrics.items() if not same(change)}
            for path, metrics in diff.items()}


def head_values(diff: dict) -> dict:
    """The head's headline metrics (those it has), from `dvc metrics diff --all`: a commit,
    the workspace or an experiment alike."""
    return {name: change["new"] for name, change in (diff.get(HEADLINE) or {}).items()
            if isinstance(change, dict) and change.get("new") is not None}


def build_comment(base: str, head: str | None = None, cwd=".", smoke: bool = False,
                  plots_url: str | None = None) -> str:
    revisions = [base] + ([head] if head else [])
    head_name = head or "workspace"
    if head is None:  # DVC reads the workspace's files as they are; a revision's come from git
        problem = unreadable_for_dvc(cwd)
        if problem:
            raise DvcDiffError(problem)
    metrics = dvc_json(["metrics", "diff", *revisions, "--targets", HEADLINE, "--all", "--json"], cwd)
    params = dvc_json(["params", "diff", *revisions, "--json"], cwd)
    parts = [MARKER, f"## cnnspec: `{base}` → `{head_name}`\n"]
    if smoke:
        parts.append(SMOKE_NOTE + "\n")
    headline = head_values(metrics)
    if not headline:
        parts.append(f"> **No metrics for `{head_name}`**: it has no readable {HEADLINE} (the run "
                     "failed, or its results were not committed with `git add metrics dvc.lock`).\n")
    elif headline.get("learned") is False:
        parts.append("> **Warning: this run did not learn**: its test accuracy is at chance level "
                     "(see the train and evaluate logs for the likely causes).\n")
    parts.append(diff_section("Metrics", metrics_table(changed_only(metrics), base, head_name)))
    parts.append(diff_section("Params", params_table(params, base, head_name)))
    if plots_url:
        parts.append(f"### Plots\n\n[plots diff against `{base}`]({plots_url}) "
                     "(`dvc plots diff`: learning curves, confusion matrix)\n")
    return "\n".join(parts)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="revision to compare against (default: main)")
    parser.add_argument("--head", help="revision to compare (default: the workspace)")
    parser.add_argument("--output", type=Path, help="write the markdown here instead of printing it")
    parser.add_argument("--repo", default=".", help="the repository (default: the current folder)")
    parser.add_argument("--smoke", action="store_true", help="label the results as the CI smoke recipe's")
    parser.add_argument("--plots-url", help="where the plots diff can be seen (a CI artifact)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    options = parser.parse_args(argv)
    comment = build_comment(options.base, options.head, options.repo, options.smoke, options.plots_url)
    if options.output:
        write_text(options.output, comment)
    else:
        print(comment, end="")


if __name__ == "__main__":
    main()
