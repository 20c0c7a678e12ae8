"""GPU figures: for speedrun94 and resnet18_cifar on CIFAR-shaped
random data, the real training loop (`cnnspec.training.loop.train`, the params.yaml recipe)
with and without torch.compile, bf16 autocast against fp32: seconds per epoch, images/s,
peak memory, and MFU = model FLOPs per second / 790e12 (an H100's dense bf16 rate), the
FLOPs of one training step (forward + backward) counted by torch.utils.flop_counter.
The first step, which holds the compile, is timed apart. Then a 10-epoch speedrun94 run.
Prints a markdown table; never asserts a timing.

    python benchmarks/gpu_throughput.py                       # on a CUDA machine, 50,000 images
    python benchmarks/gpu_throughput.py --quick --device cpu  # small sizes, to check it runs

On CPU, bf16 runs through the loop's CUDA paths (autocast, channels_last) and peak
memory is the process's peak resident set, which only grows from one row to the next.
MFU against an H100's rate means nothing on a CPU; it is printed for the format.
"""
from __future__ import annotations

import argparse
import copy
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_loop_overhead import CIFAR_SHAPE, random_prepared, spec_model, synchronize, train_params  # noqa: E402
from cnnspec.errors import exit_on_user_error  # noqa: E402
from cnnspec.training import device as placement  # noqa: E402
from cnnspec.training.device import pick_device  # noqa: E402
from cnnspec.training.loop import train  # noqa: E402

H100_BF16_FLOPS = 790e12  # dense bf16 matrix work per second (ANCHORS.md)
BATCH_SIZES = {"speedrun94": 1024, "resnet18_cifar": 512}


# ---------------------------------------------------------------- what is measured

def training_step_flops(model, images: torch.Tensor, labels: torch.Tensor) -> int:
    """FLOPs of one forward + backward pass on this batch, as FlopCounterMode counts them
    (matrix products and convolutions). Runs on a copy, so batch-norm statistics and
    gradients of `model` are left alone."""
    model = copy.deepcopy(model).train()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops()


def flops_per_image(model, shape, num_classes: int, batch: int = 2) -> float:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, *shape, generator=generator)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    return training_step_flops(model.cpu(), images, labels) / batch


def mfu(flops_per_image: float, images_per_second: float, peak: float = H100_BF16_FLOPS) -> float:
    """Model FLOPs utilisation: the share of the hardware's peak the model's own
    arithmetic would use at this throughput."""
    return flops_per_image * images_per_second / peak


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


@dataclass
class Row:
    spec: str
    compile: bool
    precision: str
    batch: int
    seconds_per_epoch: float
    images_per_second: float
    peak_memory: int
    flops_per_image: float
    first_step_seconds: float

    @property
    def mfu(self) -> float:
        return mfu(self.flops_per_image, self.images_per_second)


def measure(spec: str, data: dict, batch: int, epochs: int, compile: bool, precision: str,
            device: torch.device, flops: float) -> Row:
    """One configuration through the real loop: throughput over every step but the first."""
    meta = data["meta"]
    params = train_params(batch_size=batch, epochs=epochs, compile=compile, precision=precision)
    model = spec_model(ROOT / "specs" / f"{spec}.yaml", meta["input_shape"], len(meta["classes"]), 0)
    reset_peak_memory(device)
    result = train(model, data, params, device)
    synchronize(device)
    steps = len(data["train_labels"]) // batch * epochs
    if steps < 2:
        raise ValueError(f"{spec}: {steps} step(s) of batch {batch}; the first is timed apart, so use more images")
    images_per_second = (steps - 1) * batch / result.train_seconds
    return Row(spec, compile, precision, batch, len(data["train_labels"]) / images_per_second,
               images_per_second, peak_memory_bytes(device), flops, result.first_step_seconds)


def ten_epoch_run(data: dict, compile: bool, device: torch.device) -> tuple[float, float]:
    """speedrun94 with params.yaml's recipe for 10 epochs on every training image and no
    validation between epochs, as airbench times it (data.val_split: 0): (seconds without
    the first step, which holds the compile; that first step's seconds)."""
    meta = data["meta"]
    data = {**data, "val_images": data["val_images"][:0], "val_labels": data["val_labels"][:0]}
    params = train_params(epochs=10, compile=compile, precision="bf16")
    model = spec_model(ROOT / "specs" / "speedrun94.yaml", meta["input_shape"], len(meta["classes"]), 0)
    result = train(model, data, params, device)
    return result.train_seconds, result.first_step_seconds


# ---------------------------------------------------------------- the table

TABLE_HEADER = ("| spec | compile | precision | batch | s/epoch | images/s | peak memory | "
                "train GFLOP/image | MFU (of 790 TFLOP/s) | first step s (compile) |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def table_row(row: Row, device_name: str) -> str:
    memory = "peak allocated" if device_name.startswith("cuda") else "peak RSS"
    return (f"| {row.spec} | {'yes' if row.compile else 'no'} | {row.precision} | {row.batch} | "
            f"{row.seconds_per_epoch:.3f} | {row.images_per_second:,.0f} | "
            f"{row.peak_memory / 2**20:,.0f} MiB {memory} | {row.flops_per_image / 1e9:.3f} | "
            f"{100 * row.mfu:.2f}% | {row.first_step_seconds:.2f} |")


def markdown_table(rows: list[Row], device_name: str) -> str:
    return "\n".join([TABLE_HEADER] + [table_row(row, device_name) for row in rows])


def main_settings(args) -> dict:
    if args.quick:
        return {"images": 512, "val": 128, "epochs": 1, "batch_scale": 1 / 8}
    return {"images": 50_000, "val": 1000, "epochs": 2, "batch_scale": 1}


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="512 images, smaller batches (CPU)")
    parser.add_argument("--specs", nargs="+", default=list(BATCH_SIZES), help="spec names under specs/")
    parser.add_argument("--compile", choices=["both", "off", "on"], default="both")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "off"], choices=["bf16", "off"])
    parser.add_argument("--images", type=int, help="training images (default 50,000; 512 with --quick)")
    parser.add_argument("--epochs", type=int, help="epochs per row (the first step is left out)")
    parser.add_argument("--no-ten-epoch", action="store_true", help="skip the 10-epoch speedrun94 run")
    args = parser.parse_args(argv)
    chosen = main_settings(args)
    images, epochs = args.images or chosen["images"], args.epochs or chosen["epochs"]
    device = pick_device(args.device)
    placement.CUDA_PATHS_ON_CPU = True  # a CPU run measures the same precision and layout paths
    device_name = f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else \
        f"cpu: {torch.get_num_threads()} threads"
    data = random_prepared(images, chosen["val"])
    compiles = {"both": [False, True], "off": [False], "on": [True]}[args.compile]
    rows = []
    # each row as soon as it is measured: a run stopped by a time limit keeps what it measured
    print(f"\ntraining throughput, {images} random CIFAR-shaped images, {epochs} epoch(s) per row, "
          f"validation on {chosen['val']} images per epoch included, {device_name}, torch {torch.__version__}\n")
    print(TABLE_HEADER, flush=True)
    for spec in args.specs:
        batch = max(16, int(BATCH_SIZES.get(spec, 512) * chosen["batch_scale"]))
        model = spec_model(ROOT / "specs" / f"{spec}.yaml", CIFAR_SHAPE, 10, 0)
        flops = flops_per_image(model, CIFAR_SHAPE, 10)
        for compile in compiles:
            for precision in args.precisions:
                started = time.perf_counter()
                rows.append(measure(spec, data, batch, epochs, compile, precision, device, flops))
                print(table_row(rows[-1], device_name), flush=True)
                print(f"measured {spec} compile={compile} precision={precision} "
                      f"in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if not args.no_ten_epoch:
        for compile in compiles:
            seconds, first = ten_epoch_run(data, compile, device)
            print(f"\nspeedrun94, 10 epochs on {images} images (no validation), bf16, "
                  f"compile={'yes' if compile else 'no'}: "
                  f"{seconds:.2f} s without the first step, first step {first:.2f} s "
                  f"(target on one H100 with 50,000 images: <= 3.0 s excluding compile)")
    return rows


if __name__ == "__main__":
    main()
