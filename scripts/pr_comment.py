"""Write the pull-request comment: what changed in metrics and params against a base.

    python scripts/pr_comment.py --base origin/main                 # print the markdown
    python scripts/pr_comment.py --base origin/main --output pr.md  # or write it to a file

It runs `dvc metrics diff <base> --md` and `dvc params diff <base> --md` (against
the workspace, or against `--head` when given) and puts each under its own
heading; a diff with no rows reads "no changes". The workflow in
.github/workflows/pr.yml posts the result on the pull request.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from cnnspec.atomic import write_text
from cnnspec.errors import CnnspecError, exit_on_user_error

MARKER = "<!-- cnnspec-pr-comment -->"  # lets a workflow find its earlier comment


class DvcDiffError(CnnspecError):
    """dvc could not produce a diff (an unknown revision, not a DVC repository, ...)."""


def run_dvc(arguments: list[str], cwd) -> str:
    command = [sys.executable, "-m", "dvc", *arguments]
    environment = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        reason = lines[0] if lines else f"exit status {result.returncode}"
        raise DvcDiffError(f"`dvc {' '.join(arguments)}` failed: {reason}")
    return result.stdout


def table_rows(markdown: str) -> list[str]:
    """The data rows of a markdown table (its header and |---| line left out)."""
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return rows[2:]


def diff_section(title: str, markdown: str) -> str:
    if not table_rows(markdown):
        return f"### {title}\n\nno changes\n"
    return f"### {title}\n\n{markdown.strip()}\n"


def build_comment(base: str, head: str | None = None, cwd=".") -> str:
    revisions = [base] + ([head] if head else [])
    metrics = run_dvc(["metrics", "diff", *revisions, "--md"], cwd)
    params = run_dvc(["params", "diff", *revisions, "--md"], cwd)
    return "\n".join([
        MARKER,
        f"## cnnspec: `{base}` → `{head or 'workspace'}`\n",
        diff_section("Metrics", metrics),
        diff_section("Params", params),
    ])


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="revision to compare against (default: main)")
    parser.add_argument("--head", help="revision to compare (default: the workspace)")
    parser.add_argument("--output", type=Path, help="write the markdown here instead of printing it")
    parser.add_argument("--repo", default=".", help="the repository (default: the current folder)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    options = parser.parse_args(argv)
    comment = build_comment(options.base, options.head, options.repo)
    if options.output:
        write_text(options.output, comment)
    else:
        print(comment, end="")


if __name__ == "__main__":
    main()
