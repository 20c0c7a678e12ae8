"""Data-parallel scaling: the real train stage (`python stages/train.py`, which launches
its ranks through torchrun when train.devices > 1) run with 1, 2, ... processes on the
same data, timed by the loop's own clock (rank 0's `rest` seconds, the first step
apart), test accuracy scored from the checkpoint each run writes. Never asserts a timing.

    python benchmarks/bench_data_parallel.py                 # CPU: gloo 2 x 1 thread vs 1 x 2 threads
    python benchmarks/bench_data_parallel.py --device cuda --processes 1 2 4 8

CPU (the default): Fashion-MNIST from Debian's dataset-fashion-mnist (a subset), a small
CNN with batch norm, the same global batch for every process count (strong scaling);
one process gets all the threads (OMP_NUM_THREADS = cores), N processes get cores / N
each. Rounds alternate the process counts and the medians are printed.

CUDA: specs/resnet18_cifar.yaml on CIFAR-shaped random images (throughput only), the
per-GPU batch fixed (weak scaling: global batch = --batch x processes), bf16; scaling
efficiency of N GPUs = images/s on N / (N x images/s on 1) (target >= 0.90 per GPU).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_loop_overhead import random_prepared  # noqa: E402
from cnnspec.data.datasets import decode_raw, prepare, write_prepared  # noqa: E402
from stages.train import FIRST_STEP_AND_REST  # noqa: E402

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
CPU_SPEC = """name: fashion_small
layers:
  - conv: {filters: 32, kernel: 3, bias: false}
  - bn
  - activation: relu
  - max_pool: 2
  - conv: {filters: 64, kernel: 3, bias: false}
  - bn
  - activation: relu
  - max_pool: 2
  - flatten
  - dense: {units: 128, activation: relu}
  - dense: {units: num_classes}
"""
STAGE_LINE = re.compile(r"trained (\d+) epochs on .*; " + FIRST_STEP_AND_REST.pattern)


def write_fashion(folder: Path, data_folder: Path, num_train: int, num_test: int, val_split=0.02) -> dict:
    """folder/data/prepared: a seeded subset of Fashion-MNIST's images, prepared as preprocess would."""
    raw = decode_raw("fashion-mnist", data_folder)
    keep = np.random.default_rng(0).permutation(len(raw.train_labels))[:num_train]
    raw.train_images, raw.train_labels = raw.train_images[keep], raw.train_labels[keep]
    raw.test_images, raw.test_labels = raw.test_images[:num_test], raw.test_labels[:num_test]
    arrays, meta = prepare(raw, "fashion-mnist", val_split, 0)
    write_prepared(folder / "data" / "prepared", arrays, meta)
    return meta


def write_random(folder: Path, num_train: int) -> dict:
    data = random_prepared(num_train, max(num_train // 50, 1))
    meta = data.pop("meta")
    data["test_images"], data["test_labels"] = data["val_images"], data["val_labels"]
    meta["counts"]["test"] = len(data["test_labels"])
    write_prepared(folder / "data" / "prepared", data, meta)
    return meta


def write_params(folder: Path, spec_path: str, train: dict) -> None:
    (folder / "params.yaml").write_text(yaml.safe_dump({"model": {"spec": spec_path}, "train": train}))


def images_per_second(epochs: int, num_train: int, batch_size: int, rest_seconds: float) -> float:
    """Images trained per second of the loop's clock, which leaves out the first step."""
    steps = num_train // batch_size
    return (epochs * steps - 1) * batch_size / rest_seconds


def scaling_efficiency(throughput: float, processes: int, single: float) -> float:
    """Images/s of `processes` workers against `processes` times one worker's."""
    return throughput / (processes * single)


def test_accuracy(folder: Path) -> float:
    from cnnspec.data.datasets import load_prepared
    from cnnspec.models.checkpoint import load_network

    model, checkpoint = load_network(folder / "models" / "model.pt")
    data = load_prepared(folder / "data" / "prepared")
    mean = torch.tensor(checkpoint["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(checkpoint["std"]).view(1, -1, 1, 1)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(data["test_labels"]), 1000):
            images = torch.from_numpy(data["test_images"][start:start + 1000]).float() / 255
            labels = torch.from_numpy(data["test_labels"][start:start + 1000])
            correct += (model((images - mean) / std).argmax(1) == labels).sum().item()
    return correct / len(data["test_labels"])


def run_stage(folder: Path, threads: int) -> tuple[int, float]:
    """Run the train stage in `folder`; (epochs, loop seconds without the first step)."""
    for output in ("models", "metrics"):
        subprocess.run(["rm", "-rf", str(folder / output)], check=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    finished = subprocess.run([sys.executable, str(ROOT / "stages" / "train.py")], cwd=folder, env=env,
                              capture_output=True, text=True)
    if finished.returncode != 0:
        sys.exit(f"the train stage failed in {folder}:\n{finished.stderr[-2000:]}")
    match = STAGE_LINE.search(finished.stdout)
    return int(match.group(1)), float(match.group(3))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--processes", type=int, nargs="+", help="process counts (cpu: 1 2; cuda: 1 .. GPUs)")
    parser.add_argument("--data", type=Path, default=DEBIAN_FOLDER, help="Fashion-MNIST idx files (cpu)")
    parser.add_argument("--train-images", type=int, help="cpu: 10,000 Fashion-MNIST; cuda: 50,000 random")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, help="cpu: the global batch (128); cuda: per GPU (512)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="threads of every process (default: cores / processes)")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    processes = args.processes or ([1, 2] if not cuda else list(range(1, torch.cuda.device_count() + 1)))
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        folder = root / "stage"
        if cuda:
            num_train = args.train_images or 50_000
            write_random(folder, num_train)
            spec = str(ROOT / "specs" / "resnet18_cifar.yaml")
        else:
            num_train = args.train_images or 10_000
            write_fashion(folder, args.data, num_train, 10_000)
            (folder / "specs").mkdir()
            (folder / "specs" / "fashion_small.yaml").write_text(CPU_SPEC)
            spec = "specs/fashion_small.yaml"
        num_train = int(len(np.load(folder / "data" / "prepared" / "train_labels.npy")))
        train = {"device": args.device, "epochs": args.epochs, "seed": 0, "compile": False,
                 "precision": "bf16" if cuda else "off",
                 "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
                               "weight_decay": 5.0e-4},
                 "scheduler": {"name": "cosine"}, "lookahead": {"enabled": False},
                 "loss": {"label_smoothing": 0.0},
                 "augment": {"alternating_flip": False, "translate": 2 if cuda else 0}}
        results = {count: {"rate": [], "accuracy": []} for count in processes}
        for round_number in range(args.rounds):
            for count in processes:
                batch = (args.batch or 512) * count if cuda else (args.batch or 128)
                threads = args.threads or max(1, cores // count)
                write_params(folder, spec, {**train, "devices": count, "batch_size": batch})
                epochs, rest = run_stage(folder, threads)
                rate = images_per_second(epochs, num_train, batch, rest)
                accuracy = None if cuda else test_accuracy(folder)
                results[count]["rate"].append(rate)
                results[count]["accuracy"].append(accuracy)
                shown = "" if accuracy is None else f", test accuracy {accuracy:.4f}"
                print(f"round {round_number + 1}: {count} process(es) x {threads} thread(s), batch {batch}: "
                      f"{rate:,.0f} images/s{shown}", flush=True)
    single = statistics.median(results[processes[0]]["rate"])
    print(f"\n{args.device}, {num_train:,} training images, {args.epochs} epochs, medians of {args.rounds} rounds:")
    print("| processes | threads each | global batch | images/s | vs first row | scaling efficiency | test accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for count in processes:
        rate = statistics.median(results[count]["rate"])
        batch = (args.batch or 512) * count if cuda else (args.batch or 128)
        accuracy = "n/a (random images)" if cuda else f"{statistics.median(results[count]['accuracy']):.4f}"
        # On the CPU every row shares the same cores: only the ratio to the first row means something.
        efficiency = f"{scaling_efficiency(rate, count / processes[0], single):.3f}" if cuda else "-"
        print(f"| {count} | {args.threads or max(1, cores // count)} | {batch} | {rate:,.0f} | {rate / single:.3f} | "
              f"{efficiency} | {accuracy} |")


if __name__ == "__main__":
    main()
