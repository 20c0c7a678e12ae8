"""Time to accuracy on real data: Fashion-MNIST from Debian's dataset-fashion-mnist
package, through the pipeline's own code (the fashion-mnist decoder and `prepare` of
cnnspec.data.datasets, the params a `dvc repro` would resolve for the spec and its
recipe, `cnnspec.training.loop.train`, the evaluate stage's `predict_probabilities`
with the recipe's test-time augmentation).

    python benchmarks/fashion_time_to_accuracy.py                  # the CPU speedrun: 60/180/600 s
    python benchmarks/fashion_time_to_accuracy.py --device cuda    # the same spec and recipe on a GPU
    python benchmarks/fashion_time_to_accuracy.py --quick          # a smoke run on a 2,000-image subset
    # in fp32 on a CPU that has bf16 (the path a CPU without bf16 takes):
    python benchmarks/fashion_time_to_accuracy.py --epochs 2 --cpu-precision off

The default is specs/fashion_cpu.yaml with its own recipe (recipes/fashion_cpu.yaml)
and the CPU speedrun's targets: 91% test accuracy within 60 s of training, 92.5% within
180 s, 93.5% within 600 s.

How time is counted, as speedruns count it: a run is a whole schedule (warm-up and
decay) of a given number of epochs, so the accuracy reached "within 60 s" is the test
accuracy of the best run whose training took at most 60 s, not a snapshot of a longer
run half-way through its schedule. The script trains the run lengths of --epochs in
order until one is expected to outgrow the largest budget. Training seconds are the
wall time of the `train` call (the per-epoch validation of the small split included,
the test-set evaluation not; torch.compile, when on, is counted apart).

On a shared machine wall time is pessimistic: each run also prints the process's CPU
seconds divided by its threads and the load average before and after. The CPU seconds
are no idle-machine figure either: OpenMP threads spin while they wait for each other,
so contention adds CPU time too. `--threads 1` avoids the waiting. Never asserts a timing.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_loop_overhead import spec_model  # noqa: E402
from cnnspec.data.datasets import get_dataset, prepare  # noqa: E402
from cnnspec.errors import exit_on_user_error  # noqa: E402
from cnnspec.inference.evaluation import predict_probabilities  # noqa: E402
from cnnspec.pipeline.params import load_params, read_yaml_mapping  # noqa: E402
from cnnspec.training.device import autocast_dtype, pick_device  # noqa: E402
from cnnspec.training.loop import train  # noqa: E402

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
SPEC = ROOT / "specs" / "fashion_cpu.yaml"
BUDGETS = [60.0, 180.0, 600.0]  # seconds of training
TARGETS = [0.91, 0.925, 0.935]  # test accuracy wanted within each budget
EPOCHS = [2, 5, 10]  # run lengths of recipes/fashion_cpu.yaml for the three budgets on 2 cores


@dataclass
class Run:
    epochs: int
    seconds: float  # wall time of training, compile excluded
    accuracy: float  # on the test set, with the recipe's test-time augmentation
    cpu_seconds: float = 0.0  # CPU time of the process while training (all threads)
    threads: int = 1
    load: str = ""  # /proc/loadavg's 1-minute figure before and after the run

    @property
    def idle_seconds(self) -> float:
        """CPU seconds per thread: spin-waiting under contention included."""
        return self.cpu_seconds / max(1, self.threads)


# ---------------------------------------------------------------- reading the runs

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


# ---------------------------------------------------------------- data, params, training, test accuracy

def fashion_data(folder: Path, val_split: float, train_images: int | None, test_images: int | None):
    """(load_prepared-style dict for train, test images, test labels) decoded and split
    by the pipeline's own code; optionally cut to the first images for a quick run."""
    raw = get_dataset("fashion-mnist").decode(Path(folder))
    arrays, meta = prepare(raw, "fashion-mnist", val_split, seed=0)
    if train_images:
        arrays["train_images"] = arrays["train_images"][:train_images]
        arrays["train_labels"] = arrays["train_labels"][:train_images]
        arrays["val_images"], arrays["val_labels"] = arrays["val_images"][:512], arrays["val_labels"][:512]
    test = (arrays.pop("test_images")[:test_images], arrays.pop("test_labels")[:test_images])
    meta["counts"] = {split: len(arrays[f"{split}_labels"]) for split in ("train", "val")}
    return {**arrays, "meta": meta}, *test


def resolved_params(spec: Path, recipe: str = "auto", params_path: Path = ROOT / "params.yaml") -> dict:
    """The train and evaluate params a `dvc repro` with `model.spec` set to `spec` would
    run with: params.yaml's own values over the recipe the spec names (or `recipe`)."""
    params = read_yaml_mapping(params_path)
    params["recipe"] = recipe
    params["model"] = {**params.get("model", {}), "spec": str(Path(spec).resolve())}
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"cnnspec-fashion-params-{os.getpid()}.yaml"
    try:
        import yaml

        scratch.write_text(yaml.safe_dump(params, sort_keys=False))
        return load_params(scratch, sections=["recipe", "train", "evaluate"])
    finally:
        scratch.unlink(missing_ok=True)


def score_on_test(model, meta: dict, images: np.ndarray, labels: np.ndarray, tta: str, device) -> float:
    probabilities = predict_probabilities(model, images, meta["mean"], meta["std"], tta=tta,
                                          batch_size=2000, device=device)
    return float((probabilities.argmax(1) == labels).mean())


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def one_run(spec, data, test_images, test_labels, params, epochs, device) -> Run:
    meta = data["meta"]
    train_params = copy.deepcopy(params["train"]) | {"epochs": epochs}
    model = spec_model(spec, meta["input_shape"], len(meta["classes"]), train_params["seed"])
    load_before = load_average()
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    result = train(model, data, train_params, device)
    seconds = time.perf_counter() - wall_started
    cpu_seconds = time.process_time() - cpu_started
    if train_params["compile"]:
        seconds -= result.first_step_seconds
    accuracy = score_on_test(result.model, meta, test_images, test_labels, params["evaluate"]["tta"], device)
    return Run(epochs, seconds, accuracy, cpu_seconds, torch.get_num_threads(),
               f"{load_before} -> {load_average()}")


def ladder(spec, data, test_images, test_labels, params, rungs, budgets, device) -> list[Run]:
    runs = []
    for epochs in rungs:
        if not next_rung_fits(runs, epochs, max(budgets)):
            break
        run = one_run(spec, data, test_images, test_labels, params, epochs, device)
        runs.append(run)
        print(f"run of {epochs} epoch(s): {run.seconds:.1f} s of training ({run.idle_seconds:.1f} s of "
              f"CPU per thread, load {run.load}), test accuracy {run.accuracy:.4f}", file=sys.stderr)
        if run.seconds > max(budgets):
            break
    return runs


def report(runs: list[Run], budgets: list[float], targets: list[float]) -> list[str]:
    lines = ["| budget | target | test accuracy of the best run that fit | met |", "| --- | --- | --- | --- |"]
    for budget, target in zip(budgets, targets + [None] * len(budgets)):
        accuracy = accuracy_within(runs, budget)
        reached = "no run fit" if accuracy is None else f"{100 * accuracy:.2f}%"
        wanted = "-" if target is None else f"{100 * target:g}%"
        met = "-" if target is None or accuracy is None else ("yes" if accuracy >= target else "no")
        lines.append(f"| {budget:g} s | {wanted} | {reached} | {met} |")
    lines.append("")
    for target in targets:
        to_target = seconds_to(runs, target)
        lines.append(f"seconds to {100 * target:g}% test accuracy: "
                     + ("not reached" if to_target is None else f"{to_target:.1f} s"))
    return lines


# ---------------------------------------------------------------- the script

def settings(args) -> dict:
    if args.quick:
        return {"budgets": [60.0], "targets": [0.75], "train_images": 2000, "test_images": 2000,
                "epochs": [1, 2]}
    return {"budgets": BUDGETS, "targets": TARGETS, "train_images": None, "test_images": None,
            "epochs": EPOCHS}


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2,000 training images, 1 and 2 epochs")
    parser.add_argument("--data", type=Path, default=DEBIAN_FOLDER, help="folder of the four idx .gz files")
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--recipe", default="auto", help="a recipe name; auto: the one the spec names")
    parser.add_argument("--budgets", type=float, nargs="+", help="seconds of training")
    parser.add_argument("--targets", type=float, nargs="+", help="test accuracy wanted within each budget")
    parser.add_argument("--epochs", type=int, nargs="+", help="the run lengths, shortest first")
    parser.add_argument("--train-images", type=int, help="use only the first N training images")
    parser.add_argument("--test-images", type=int, help="score only the first N test images")
    parser.add_argument("--batch", type=int, help="train.batch_size (default: the recipe's)")
    parser.add_argument("--lr", type=float, help="train.optimizer.lr (default: the recipe's)")
    parser.add_argument("--tta", choices=["none", "flip", "flip_translate"], help="default: the recipe's")
    parser.add_argument("--cpu-precision", choices=["bf16", "off"],
                        help="train.cpu_precision (default: the recipe's); off measures fp32 on a CPU with bf16")
    parser.add_argument("--val-split", type=float, default=0.02, help="as params.yaml's data.val_split")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own, one per core); "
                        "1 keeps a shared machine from stalling every step at OpenMP barriers")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = settings(args)
    chosen.update({key: value for key in chosen if (value := getattr(args, key, None)) is not None})
    device = pick_device(args.device)
    params = resolved_params(args.spec, args.recipe)
    train_params = params["train"]
    train_params["compile"] = args.compile or train_params["compile"]
    if args.batch:
        train_params["batch_size"] = args.batch
    if args.lr:
        train_params["optimizer"]["lr"] = args.lr
    if args.tta:
        params["evaluate"]["tta"] = args.tta
    if args.cpu_precision:
        train_params["cpu_precision"] = args.cpu_precision
    data, test_images, test_labels = fashion_data(args.data, args.val_split, chosen["train_images"],
                                                  chosen["test_images"])
    runs = ladder(args.spec, data, test_images, test_labels, params, chosen["epochs"], chosen["budgets"], device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    autocast = autocast_dtype(device, train_params["precision"], train_params["cpu_precision"])
    where += f", {'fp32' if autocast is None else str(autocast).removeprefix('torch.')}"
    print(f"\nFashion-MNIST time to accuracy: {args.spec.name} with recipe {params['recipe']}, "
          f"{len(data['train_labels'])} training / {len(test_labels)} test images, batch "
          f"{train_params['batch_size']}, TTA {params['evaluate']['tta']}, compile {train_params['compile']}, {where}")
    print("runs: " + ", ".join(f"{run.epochs} ep {run.seconds:.1f} s ({run.idle_seconds:.1f} s CPU/thread, "
                               f"load {run.load}) {100 * run.accuracy:.2f}%" for run in runs))
    print("\n".join(report(runs, chosen["budgets"], chosen["targets"])))
    return runs


if __name__ == "__main__":
    main()
