"""The DVC pipeline's files, named once: what each stage reads and writes (dvc.yaml
lists the same paths, relative to the repository root), and the hint that names the
stage to run when one of them is missing.

    download -> data/raw -> preprocess -> data/prepared -> train -> models/model.pt,
    metrics/train -> evaluate -> metrics/eval.json, eval_report.json, predictions.csv -> plot -> metrics/plots
    params.yaml + its recipe -> resolve -> params.resolved.yaml (what train and evaluate read)
"""
from __future__ import annotations

import os
from pathlib import Path

PARAMS = Path("params.yaml")
RESOLVED_PARAMS = Path("params.resolved.yaml")  # the resolve stage's output, beside params.yaml
RAW = Path("data/raw")
PREPARED = Path("data/prepared")
MODEL = Path("models/model.pt")
RESUME_STATE = Path("models/resume/state.pt")  # not a DVC output: `dvc repro` keeps it
TRAIN_LOG = Path("metrics/train")  # DVCLive's folder
TRAIN_CURVES = TRAIN_LOG / "plots" / "metrics"  # DVCLive's TSVs, one per metric
EVAL_JSON = Path("metrics/eval.json")  # the headline metrics
EVAL_REPORT = Path("metrics/eval_report.json")  # per-class scores, confusion matrix
PREDICTIONS_CSV = Path("metrics/predictions.csv")
MISTAKES_CSV = Path("metrics/mistakes.csv")  # the wrong test predictions, most confident first
PLOTS = Path("metrics/plots")
EXPORT = Path("models/export")  # the optional export stage's (export/dvc.yaml)


def run_stage_hint(stage: str) -> str:
    """What to run to make a missing or stale file of `stage`."""
    return f"run the {stage} stage (python stages/{stage}.py or dvc repro {stage})"


DOWNLOAD_HINT = run_stage_hint("download")
PREPROCESS_HINT = run_stage_hint("preprocess")
TRAIN_HINT = run_stage_hint("train")
EVALUATE_HINT = run_stage_hint("evaluate")
RESOLVE_HINT = run_stage_hint("resolve")


def path_problem(path: Path, kind: str) -> str | None:
    """Why `path` cannot be read as a `kind` ("file", "folder" or "path": either), or None."""
    if not path.exists():
        return {"file": "no such file", "folder": "no such folder"}.get(kind, "no such file or folder")
    if kind == "file" and not path.is_file():
        return "is a folder, not a file" if path.is_dir() else "not a regular file"
    if kind == "folder" and not path.is_dir():
        return "is a file, not a folder"
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        return "not readable (permission denied)"
    return None
