"""Stage 4 of 5, evaluate: score models/model.pt on the test split of data/prepared/.

    python stages/evaluate.py        (reads params.yaml: evaluate)

Writes metrics/eval.json (accuracy, loss, per-class precision/recall/F1, the
confusion matrix) and metrics/predictions.csv (`index,actual,predicted`, for
DVC's confusion template), each atomically, and prints the report.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python stages/<name>.py`: import this checkout's cnnspec
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnspec.atomic import write_json, write_text
from cnnspec.errors import exit_on_user_error
from cnnspec.params import load_stage_params
from cnnspec.pipeline import EVAL_JSON, MODEL, PARAMS, PREDICTIONS_CSV, PREPARED


@exit_on_user_error
def main() -> None:
    params = load_stage_params(PARAMS, sections=["evaluate"])["evaluate"]
    # torch loads only after params.yaml passed, so a typo fails in a blink.
    from cnnspec import evaluation

    report, actual, predicted = evaluation.evaluate_checkpoint(
        MODEL, PREPARED, tta=params["tta"], batch_size=params["batch_size"])
    write_json(EVAL_JSON, report)
    write_text(PREDICTIONS_CSV, evaluation.predictions_csv(actual, predicted, report["classes"]))
    print(evaluation.report_table(report))
    print(f"wrote {EVAL_JSON} and {PREDICTIONS_CSV}")


if __name__ == "__main__":
    main()
