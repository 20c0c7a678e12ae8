"""`cnnspec exps`: the DVC experiments as one table that fits a terminal.

    cnnspec exps            (in the repository; `make exps` runs it)

`dvc exp show` lists every param twice (params.yaml and params.resolved.yaml) and
every dependency hash: thousands of columns once experiments differ in a few effective
params. This reads `dvc exp show --json` and prints one row an experiment: its name,
the headline metrics (metrics/eval.json) and the params.yaml values it changed from
its baseline commit, which are the ones set with `-S`. Rows are grouped under their
baseline, best accuracy first; the table fits `--width` columns (the terminal's).

    experiment        accuracy    loss  learned  changed (-S)
    main (a1b2c3d)      0.9012  0.3050  true
      fiery-lamb        0.9240  0.2301  true     train.batch_size=64 train.epochs=30
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

from cnnspec.errors import CnnspecError, on_one_line

HEADLINE = "metrics/eval.json"
PARAMS_FILE = "params.yaml"
METRICS = (("accuracy", 8), ("loss", 7), ("learned", 7))
NAME_WIDTH = 20
MIN_WIDTH = 60  # the name, the metrics and the start of the params


DVC_TIMEOUT = 300  # seconds; a repository of hundreds of experiments answers in well under a minute


def exp_show_json(repo=".") -> list:
    """`dvc exp show --json` of the repository at `repo` (the dvc beside this Python first)."""
    from cnnspec.pipeline.dvc_runs import unreadable_for_dvc

    beside = Path(sys.executable).parent / "dvc"
    dvc = str(beside) if beside.is_file() else shutil.which("dvc")
    if dvc is None:
        raise CnnspecError("dvc: not found on PATH; activate the project's venv (make run creates .venv)")
    problem = unreadable_for_dvc(repo)
    if problem:
        raise CnnspecError(problem)
    try:
        result = subprocess.run([dvc, "exp", "show", "--json"], cwd=repo, capture_output=True, text=True,
                                timeout=DVC_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise CnnspecError(f"dvc exp show --json: no answer after {DVC_TIMEOUT} s; stopped") from None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise CnnspecError(f"dvc exp show --json: {reason}")
    try:
        return json.loads(result.stdout)
    except (ValueError, RecursionError):
        raise CnnspecError("dvc exp show --json: did not print JSON") from None


def flatten(value, prefix="") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def _params(data: dict) -> dict:
    return flatten(((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data") or {})


def _metrics(data: dict) -> dict:
    return ((data.get("metrics") or {}).get(HEADLINE) or {}).get("data") or {}


def _changed(params: dict, base_params: dict) -> dict:
    """{key: value} of `params` that differ from `base_params` (None for a key dropped)."""
    changed = {key: value for key, value in params.items()
               if key not in base_params or base_params[key] != value}
    changed.update({key: None for key in base_params if key not in params})
    return changed


def rows(show: list) -> list[dict]:
    """One dict per baseline commit and experiment: name, depth (0 baseline, 1 experiment),
    metrics, changed ({key: value} of params.yaml differing from the baseline's). The
    workspace comes first when its results are not its commit's (a `dvc repro` not
    committed yet)."""
    table = []
    workspace = next((commit for commit in show if commit.get("rev") == "workspace"), None)
    for commit in show:
        if commit is workspace:
            continue
        data = commit.get("data") or {}
        base_params = _params(data)
        name = commit.get("name") or commit.get("rev", "")[:7]
        label = f"{name} ({commit['rev'][:7]})" if commit.get("name") else name
        table.append({"name": label, "depth": 0, "metrics": _metrics(data), "changed": {}})
        experiments = []
        for experiment in commit.get("experiments") or []:
            revs = experiment.get("revs") or []
            if not revs:
                continue
            data = revs[0].get("data") or {}
            changed = _changed(_params(data), base_params)
            state = _state(experiment, revs[0])
            # A queued, running or failed experiment has no metrics of its own: DVC shows
            # the files of the commit it started from, the baseline's scores.
            metrics = _metrics(data) if state is None else {}
            experiments.append({"name": experiment.get("name") or revs[0].get("rev", "")[:7], "depth": 1,
                                "metrics": metrics, "changed": changed, "state": state})
        experiments.sort(key=lambda row: -_number(row["metrics"].get("accuracy")))
        table.extend(experiments)
    if workspace is not None and table:
        data = workspace.get("data") or {}
        head = next(commit for commit in show if commit is not workspace)
        changed = _changed(_params(data), _params(head.get("data") or {}))
        if _metrics(data) and (_metrics(data) != table[0]["metrics"] or changed):
            table.insert(0, {"name": "workspace", "depth": 0, "metrics": _metrics(data), "changed": changed})
    return table


def _state(experiment: dict, rev: dict) -> str | None:
    """"failed", "queued" or "running"; None for an experiment that ran to the end."""
    state = (experiment.get("executor") or {}).get("state")
    if rev.get("error") or state == "failed":
        return "failed"
    return state if state in ("queued", "running") else None


def _number(value) -> float:
    """A metric to sort by; anything else (text, NaN, a 400-digit integer) sorts last."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("-inf")
    try:
        number = float(value)
    except OverflowError:
        return float("-inf")
    return float("-inf") if math.isnan(number) else number


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4f}"
    return on_one_line(str(value))  # an experiment's files are text anyone could have written


def _value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return on_one_line(json.dumps(value, separators=(",", ":")))
    return _cell(value) if isinstance(value, bool) else on_one_line(str(value))


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def render(show: list, width: int = 120) -> str:
    """The table, every line at most `width` characters."""
    table = rows(show)
    if not table:
        return "no experiments yet: dvc exp run -S key=value runs one"
    head = ["experiment".ljust(NAME_WIDTH)] + [name.rjust(size) for name, size in METRICS] + ["changed (-S)"]
    lines = [clip("  ".join(head), width)]
    fixed = NAME_WIDTH + sum(size + 2 for _, size in METRICS) + 2
    for row in table:
        name = ("  " * row["depth"]) + on_one_line(row["name"])
        cells = [clip(name, NAME_WIDTH).ljust(NAME_WIDTH)]
        cells += [clip(_cell(row["metrics"].get(metric)), size).rjust(size) for metric, size in METRICS]
        changed = " ".join(f"{on_one_line(key)}={_value(value)}" for key, value in sorted(row["changed"].items()))
        if row.get("state"):
            changed = f"({row['state']}) " + changed
        cells.append(clip(changed, max(10, width - fixed)))
        lines.append(clip("  ".join(cells).rstrip(), width))
    return "\n".join(lines)


def terminal_width() -> int:
    return max(MIN_WIDTH, shutil.get_terminal_size((120, 24)).columns)


def run_command(args) -> int:
    from cnnspec.errors import UsageError

    if args.width is not None and args.width < MIN_WIDTH:
        raise UsageError(f"--width: expected a number >= {MIN_WIDTH}, not {args.width}")
    print(render(exp_show_json(), args.width or terminal_width()))
    return 0
