"""The few numbers an experiment table shows, apart from the full report.

metrics/eval.json (DVC metrics: `dvc metrics diff`, `dvc exp show`, the PR comment)
holds only these; metrics/eval_report.json keeps everything evaluation computes
(per-class precision/recall/F1, averages, the confusion matrix) for plots and docs,
so 10 classes do not become 60 rows of `dvc metrics diff`, nor 100 classes 600.
"""
from __future__ import annotations

HEADLINE_KEYS = ("accuracy", "top5_accuracy", "loss")


def headline(report: dict, learned: bool) -> dict:
    """accuracy, top-5 accuracy where the report has it, loss, macro F1, learned."""
    numbers = {key: report[key] for key in HEADLINE_KEYS if key in report}
    macro = report.get("macro_avg") or {}
    if "f1" in macro:
        numbers["macro_f1"] = macro["f1"]
    numbers["learned"] = bool(learned)
    return numbers
