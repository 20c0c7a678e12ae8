"""The DVC pipeline's files, named once: what each stage reads and writes (dvc.yaml
lists the same paths, relative to the repository root), and the hint that names the
stage to run when one of them is missing.

    download -> data/raw -> preprocess -> data/prepared -> train -> models/model.pt,
    metrics/train -> evaluate -> metrics/eval.json, eval_report.json, predictions.csv -> plot -> metrics/plots
"""
from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")
RESOLVED_PARAMS = Path("params.resolved.yaml")  # the resolve stage's: params.yaml merged with its recipe
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
