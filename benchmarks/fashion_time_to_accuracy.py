"""Time to accuracy on real data: Fashion-MNIST from Debian's
dataset-fashion-mnist package, through the pipeline's own code (the fashion-mnist
decoder and `prepare` of cnnspec.data.datasets, `cnnspec.training.loop.train`, the evaluate
stage's `predict_probabilities`), with specs/fashion_resnet.yaml.

    python benchmarks/fashion_time_to_accuracy.py                  # GPU: budgets 15, 60, 180 s
    python benchmarks/fashion_time_to_accuracy.py --quick          # CPU: a 60 s budget, a subset

How time is counted, as speedruns count it: a run is a whole schedule (warm-up and
decay) of a given number of epochs, so the accuracy reached "at 15 s" is the test
accuracy of the longest run whose training took at most 15 s, not a snapshot of a
longer run half-way through its schedule. The script trains a ladder of runs (1, 2, 4,
8 ... epochs) until one takes longer than the largest budget, then reports, for each
budget, the best test accuracy of a run that fit in it, and the seconds of the
shortest run that reached 93%. Training seconds include the per-epoch validation of a
small split and exclude torch.compile (the loop times its first step apart).
Targets on one H100: 94% within 15 s, 95.5% within 180 s. Never asserts a timing.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_loop_overhead import spec_model, train_params  # noqa: E402
from cnnspec.data.datasets import get_dataset, prepare  # noqa: E402
from cnnspec.errors import exit_on_user_error  # noqa: E402
from cnnspec.inference.evaluation import predict_probabilities  # noqa: E402
from cnnspec.training.device import pick_device  # noqa: E402
from cnnspec.training.loop import train  # noqa: E402

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
SPEC = ROOT / "specs" / "fashion_resnet.yaml"
TARGET = 0.93


@dataclass
class Run:
    epochs: int
    seconds: float  # training, compile excluded
    accuracy: float  # on the test set


# ---------------------------------------------------------------- reading the ladder

def accuracy_within(runs: list[Run], budget: float) -> float | None:
    """The best test accuracy of a run that trained in at most `budget` seconds."""
    fitting = [run.accuracy for run in runs if run.seconds <= budget]
    return max(fitting) if fitting else None


def seconds_to(runs: list[Run], target: float) -> float | None:
    """The training seconds of the fastest run that reached `target` accuracy."""
    reaching = [run.seconds for run in runs if run.accuracy >= target]
    return min(reaching) if reaching else None


def next_rung_fits(runs: list[Run], epochs: int, largest_budget: float) -> bool:
    """Whether a run of `epochs` is expected to finish within the largest budget, from
    the seconds per epoch of the last run (a 10% margin for noise)."""
    if not runs:
        return True
    per_epoch = runs[-1].seconds / runs[-1].epochs
    return per_epoch * epochs <= 1.1 * largest_budget


# ---------------------------------------------------------------- data, training, test accuracy

def fashion_data(folder: Path, val_split: float, train_images: int | None, test_images: int | None):
    """(load_prepared-style dict for train, test images, test labels) decoded and split
    by the pipeline's own code; optionally cut to the first images for a CPU run."""
    raw = get_dataset("fashion-mnist").decode(Path(folder))
    arrays, meta = prepare(raw, "fashion-mnist", val_split, seed=0)
    if train_images:
        arrays["train_images"] = arrays["train_images"][:train_images]
        arrays["train_labels"] = arrays["train_labels"][:train_images]
        arrays["val_images"], arrays["val_labels"] = arrays["val_images"][:512], arrays["val_labels"][:512]
    test = (arrays.pop("test_images")[:test_images], arrays.pop("test_labels")[:test_images])
    meta["counts"] = {split: len(arrays[f"{split}_labels"]) for split in ("train", "val")}
    return {**arrays, "meta": meta}, *test


def score_on_test(model, meta: dict, images: np.ndarray, labels: np.ndarray, device) -> float:
    probabilities = predict_probabilities(model, images, meta["mean"], meta["std"], tta="none",
                                          batch_size=2000, device=device)
    return float((probabilities.argmax(1) == labels).mean())


def recipe(epochs: int, batch_size: int, compile: bool) -> dict:
    """params.yaml's fast recipe (Nesterov SGD, warm-up then linear decay, label
    smoothing, lookahead, alternating flip, 2-pixel translate) at this length."""
    return train_params(epochs=epochs, batch_size=batch_size, compile=compile,
                        optimizer={"lr": 0.2 * batch_size / 1024})


def one_run(spec, data, test_images, test_labels, epochs, batch_size, compile, device) -> Run:
    meta = data["meta"]
    params = recipe(epochs, batch_size, compile)
    model = spec_model(spec, meta["input_shape"], len(meta["classes"]), params["seed"])
    result = train(model, data, params, device)
    seconds = result.train_seconds + (0.0 if compile else result.first_step_seconds)
    return Run(epochs, seconds, score_on_test(result.model, meta, test_images, test_labels, device))


def ladder(spec, data, test_images, test_labels, rungs, budgets, batch_size, compile, device) -> list[Run]:
    runs = []
    for epochs in rungs:
        if not next_rung_fits(runs, epochs, max(budgets)):
            break
        run = one_run(spec, data, test_images, test_labels, epochs, batch_size, compile, device)
        runs.append(run)
        print(f"run of {epochs} epoch(s): {run.seconds:.1f} s of training, test accuracy "
              f"{run.accuracy:.4f}", file=sys.stderr)
        if run.seconds > max(budgets):
            break
    return runs


def report(runs: list[Run], budgets: list[float]) -> list[str]:
    lines = ["| budget | test accuracy of the best run that fit |", "| --- | --- |"]
    for budget in budgets:
        accuracy = accuracy_within(runs, budget)
        lines.append(f"| {budget:g} s | {'no run fit' if accuracy is None else f'{100 * accuracy:.2f}%'} |")
    to_target = seconds_to(runs, TARGET)
    lines.append("")
    lines.append(f"seconds to {100 * TARGET:.0f}% test accuracy: "
                 + ("not reached" if to_target is None else f"{to_target:.1f} s"))
    return lines


# ---------------------------------------------------------------- the script

def settings(args) -> dict:
    if args.quick:
        return {"budgets": [60.0], "train_images": 2000, "test_images": 2000, "batch": 64}
    return {"budgets": [15.0, 60.0, 180.0], "train_images": None, "test_images": None, "batch": 512}


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="CPU: a 60 s budget on 2,000 training images")
    parser.add_argument("--data", type=Path, default=DEBIAN_FOLDER, help="folder of the four idx .gz files")
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--budgets", type=float, nargs="+", help="seconds of training")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64],
                        help="the ladder of run lengths")
    parser.add_argument("--train-images", type=int, help="use only the first N training images")
    parser.add_argument("--test-images", type=int, help="score only the first N test images")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--val-split", type=float, default=0.02)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    chosen = settings(args)
    chosen.update({key: value for key in chosen if (value := getattr(args, key)) is not None})
    device = pick_device(args.device)
    data, test_images, test_labels = fashion_data(args.data, args.val_split, chosen["train_images"],
                                                  chosen["test_images"])
    runs = ladder(args.spec, data, test_images, test_labels, args.epochs, chosen["budgets"],
                  chosen["batch"], args.compile, device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nFashion-MNIST time to accuracy: {args.spec.name}, {len(data['train_labels'])} training / "
          f"{len(test_labels)} test images, batch {chosen['batch']}, compile {args.compile}, {where}")
    print("runs: " + ", ".join(f"{run.epochs} ep {run.seconds:.1f} s {100 * run.accuracy:.2f}%" for run in runs))
    print("\n".join(report(runs, chosen["budgets"])))
    return runs


if __name__ == "__main__":
    main()
