"""Stage 5 of 6, evaluate: score models/model.pt on the test split of data/prepared/.

    python stages/evaluate.py        (reads params.resolved.yaml: evaluate)

Writes metrics/eval.json (the headline: accuracy, top-5 accuracy where it applies,
loss, macro F1, learned), metrics/eval_report.json (the full report: per-class
precision/recall/F1, the confusion matrix), metrics/predictions.csv
(`index,actual,predicted,confidence`, for DVC's confusion template, and each image's
`path` for folder and csv datasets) and metrics/mistakes.csv (the wrong predictions,
most confident first, with their paths), each atomically, and
prints the report. A test accuracy at chance level prints one warning line.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python stages/<name>.py`: import this checkout's cnnspec
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnspec.atomic import write_json, write_text
from cnnspec.errors import end_finished_script, exit_on_user_error
from cnnspec.paths import EVAL_JSON, EVAL_REPORT, MISTAKES_CSV, MODEL, PARAMS, PREDICTIONS_CSV, PREPARED
from cnnspec.pipeline.params import load_workspace_plugins
from cnnspec.pipeline.resolved import load_resolved_params


@exit_on_user_error
def main() -> None:
    params = load_resolved_params(PARAMS, sections=["evaluate"])["evaluate"]
    load_workspace_plugins(PARAMS)  # the workspace's own model.plugins: a checkpoint never imports code
    # torch loads only after the params passed, so a typo fails in a blink.
    from cnnspec.data.datasets import split_files
    from cnnspec.inference import evaluation
    from cnnspec.training.device import reuse_freed_memory

    reuse_freed_memory()  # the test set goes through in batches: each reuses the last one's memory
    report, actual, predicted, probabilities = evaluation.evaluate_checkpoint(
        MODEL, PREPARED, tta=params["tta"], batch_size=params["batch_size"], with_probabilities=True,
        progress=True)  # a resnet50 at 224x224 on a CPU, or with TTA, runs for minutes
    paths = split_files(PREPARED, "test")  # folder and csv datasets: each test image's file
    if paths is not None and len(paths) != len(actual):
        paths = None
    from cnnspec.pipeline.headline import headline
    from cnnspec.training import learning_check as runcheck

    learned, reason = runcheck.verdict(len(report["classes"]), report["accuracy"], "test accuracy",
                                       images=len(actual))
    write_json(EVAL_REPORT, report)
    write_text(PREDICTIONS_CSV, evaluation.predictions_csv(actual, predicted, report["classes"],
                                                           probabilities, paths))
    write_text(MISTAKES_CSV, evaluation.mistakes_csv(actual, probabilities, report["classes"], paths))
    write_json(EVAL_JSON, headline(report, learned))
    print(evaluation.report_table(report))
    if not learned:
        runcheck.warn(reason, trained_with(MODEL))
    print(f"wrote {EVAL_JSON}, {EVAL_REPORT}, {PREDICTIONS_CSV} and {MISTAKES_CSV}")


def trained_with(model_path) -> dict:
    """The params the checkpoint was trained with, for the warning's likely causes."""
    from cnnspec.models.checkpoint import read_checkpoint

    return read_checkpoint(model_path).get("params") or {}


if __name__ == "__main__":
    main()
    end_finished_script()
