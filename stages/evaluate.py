"""Evaluate stage: score models/model.pt on the test split of data/prepared.

Writes metrics/eval.json (accuracy, loss, per-class precision/recall/F1, the
confusion matrix) and metrics/predictions.csv (`index,actual,predicted`, for
DVC's confusion template), each atomically, and prints the report.

    python stages/evaluate.py        (reads the `evaluate` section of params.yaml)
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python stages/<name>.py`: use this checkout's cnnspec
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnspec.atomic import write_json, write_text
from cnnspec.errors import exit_on_user_error
from cnnspec.params import load_params

MODEL = Path("models/model.pt")
PREPARED = Path("data/prepared")
EVAL_JSON = Path("metrics/eval.json")
PREDICTIONS_CSV = Path("metrics/predictions.csv")


@exit_on_user_error
def main() -> None:
    params = load_params("params.yaml", ["evaluate"])["evaluate"]
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
