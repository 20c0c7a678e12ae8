"""Does `train.channels_last` speed up cnnspec's training on a CPU? The real loop
(`cnnspec.training.loop.train`, fp32, Adam, batch 64) on Fashion-MNIST, NCHW against
channels_last, in interleaved rounds (the order alternating each round), per model and
torch thread count. Prints the median seconds of the steps (first step excluded) and the
median of the per-round ratio NCHW / channels_last (above 1: channels_last is faster).

    python benchmarks/bench_cpu_channels_last.py --models simcnn ironhack_cnn --threads 1 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_loop_overhead import NO_EXTRAS, train_params  # noqa: E402
from benchmarks.versus_peers import DEBIAN_FOLDER, fashion_task_data  # noqa: E402
from cnnspec import build_model, load_spec  # noqa: E402
from cnnspec.training import device as placement  # noqa: E402
from cnnspec.training import loop as training  # noqa: E402


def seconds(model_name: str, data: dict, channels_last: bool, epochs: int) -> float:
    torch.manual_seed(0)
    model = build_model(load_spec(ROOT / "specs" / f"{model_name}.yaml"), data["meta"]["input_shape"],
                        len(data["meta"]["classes"]))
    params = train_params(**{**NO_EXTRAS, "epochs": epochs, "batch_size": 64, "seed": 0, "precision": "off",
                             "channels_last": channels_last, "deterministic": False,
                             "optimizer": {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.0}})
    return training.train(model, data, params, "cpu").train_seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["simcnn", "ironhack_cnn"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--train-images", type=int, default=1280)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    # Before channels_last applied on CPU, this switch was the only way to reach it there;
    # precision "off" keeps autocast out of the comparison either way.
    placement.CUDA_PATHS_ON_CPU = True
    cut = fashion_task_data(DEBIAN_FOLDER, args.train_images, 256, batch=64)
    data = {"train_images": cut["train_images"], "train_labels": cut["train_labels"],
            "val_images": cut["test_images"], "val_labels": cut["test_labels"],
            "meta": {"dataset": "fashion-mnist", "classes": cut["classes"], "input_shape": [1, 28, 28],
                     "mean": cut["mean"], "std": cut["std"],
                     "counts": {"train": len(cut["train_labels"]), "val": len(cut["test_labels"])}}}
    print("| model | threads | NCHW s (median) | channels_last s (median) | NCHW / channels_last, per round | median |")
    print("| --- | --- | --- | --- | --- | --- |")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for model_name in args.models:
            times = {False: [], True: []}
            seconds(model_name, data, True, 1)  # warm-up: oneDNN's kernels for both layouts
            seconds(model_name, data, False, 1)
            for round_ in range(args.rounds):
                for layout in ((False, True) if round_ % 2 == 0 else (True, False)):
                    times[layout].append(seconds(model_name, data, layout, args.epochs))
            ratios = [nchw / last for nchw, last in zip(times[False], times[True])]
            print(f"| {model_name} | {threads} | {statistics.median(times[False]):.2f} | "
                  f"{statistics.median(times[True]):.2f} | {' '.join(f'{r:.2f}' for r in ratios)} | "
                  f"{statistics.median(ratios):.2f} |", flush=True)


if __name__ == "__main__":
    main()
