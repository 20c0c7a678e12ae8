"""Loop overhead: images/s of cnnspec's real training loop
(`cnnspec.training.loop.train`, logging to DVCLive in a temporary folder as the stage does)
against a bare loop that trains the same model on the same data, already normalized
on the device, with the same optimizer and loss and nothing else. Both run in the same
process, in interleaved rounds; the median ratio is printed (target on a GPU: >= 0.95).
Never asserts a timing.

    python benchmarks/bench_loop_overhead.py                 # speedrun94, 50,000 images
    python benchmarks/bench_loop_overhead.py --quick         # simcnn, 2,048 images (CPU)
    pytest benchmarks/bench_loop_overhead.py --benchmark-enable

Two ratios are printed:
- whole call: wall time of `train(...)` (moving uint8 data to the device, init,
  logging) against the bare loop's epochs. Neither loop validates: the data has no
  validation split (data.val_split: 0), since validation is work, not overhead;
- in loop: the loop's own clock (`TrainResult.train_seconds`, which leaves out the
  first step) against the bare loop timed the same way.
Augmentation, lookahead, EMA and the lr schedule are off in both, so both do the same
arithmetic; the tests check that they end with the same weights. `--compile` compiles
the model in both loops, which tells a cost of torch.compile itself from one of the loop.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnnspec.data.datasets import Normalize  # noqa: E402
from cnnspec.errors import exit_on_user_error  # noqa: E402
from cnnspec.models.compiler import build_model  # noqa: E402
from cnnspec.pipeline.params import load_params  # noqa: E402
from cnnspec.training import optimization  # noqa: E402
from cnnspec.training.device import pick_device  # noqa: E402
from cnnspec.training.loop import train  # noqa: E402

CIFAR_SHAPE = (3, 32, 32)


# ---------------------------------------------------------------- shared by the benchmark scripts

def random_prepared(num_train: int, num_val: int, shape=CIFAR_SHAPE, num_classes: int = 10,
                    seed: int = 0) -> dict:
    """A dataset in load_prepared's format (uint8 images, int64 labels, meta) of random
    pixels: what throughput needs, without CIFAR-10 (which cannot be downloaded here)."""
    rng = np.random.default_rng(seed)

    def split(count):
        return (rng.integers(0, 256, (count, *shape), dtype=np.uint8),
                rng.integers(0, num_classes, count).astype(np.int64))

    (train_images, train_labels), (val_images, val_labels) = split(num_train), split(num_val)
    meta = {"dataset": "random", "classes": [f"class{i}" for i in range(num_classes)],
            "input_shape": list(shape), "mean": [0.5] * shape[0], "std": [0.29] * shape[0],
            "counts": {"train": num_train, "val": num_val, "test": 0}}
    return {"train_images": train_images, "train_labels": train_labels, "val_images": val_images,
            "val_labels": val_labels, "meta": meta}


def train_params(**overrides) -> dict:
    """params.yaml's train section (validated, defaults filled) with `overrides`; a
    value that is a dict updates the sub-section of the same name."""
    params = copy.deepcopy(load_params(ROOT / "params.yaml", sections=["train"])["train"])
    for key, value in overrides.items():
        if isinstance(value, dict):
            params[key] = {**params[key], **value}
        else:
            params[key] = value
    return params


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def spec_model(spec, shape, num_classes: int, seed: int):
    torch.manual_seed(seed)
    return build_model(spec, tuple(shape), num_classes)


# ---------------------------------------------------------------- the two loops

NO_EXTRAS = {
    "augment": {"hflip": False, "alternating_flip": False, "vflip": False, "translate": 0,
                "crop_padding": 0, "cutout": 0},
    "lookahead": {"enabled": False},
    "ema": {"enabled": False},
    "early_stopping": {"enabled": False},
    "scheduler": {"name": "none"},
    "class_weights": {"mode": "none", "multipliers": {}},
    "compile": False,
    # The lr does not change what a step costs; params.yaml's 1.5 is meant for speedrun94
    # under its warm-up and makes other specs diverge without one (the real loop stops on nan).
    "optimizer": {"lr": 0.01},
}


def loop_params(batch_size: int, epochs: int, seed: int = 0, compile: bool = False) -> dict:
    return train_params(batch_size=batch_size, epochs=epochs, seed=seed, **{**NO_EXTRAS, "compile": compile})


def real_loop(model, data: dict, params: dict, device) -> tuple[float, float, int]:
    """(wall seconds of the call, the loop's own seconds without its first step, images
    trained) for cnnspec.training.loop.train logging to a temporary DVCLive folder."""
    with tempfile.TemporaryDirectory() as log_dir:
        started = time.perf_counter()
        result = train(model, data, params, device, log_dir=log_dir)
        synchronize(torch.device(device))
        wall = time.perf_counter() - started
    steps = len(data["train_labels"]) // params["batch_size"]
    return wall, result.train_seconds, steps * params["batch_size"] * params["epochs"]


class BareData:
    """Training images normalized once, on the device, as the real loop's data would be
    if gathering and normalizing per batch cost nothing (bare_loop puts them in the
    loop's memory layout)."""

    def __init__(self, data: dict, device: torch.device):
        meta = data["meta"]
        images = torch.from_numpy(data["train_images"]).to(device)
        self.images = Normalize(meta["mean"], meta["std"], device)(images)
        self.labels = torch.from_numpy(data["train_labels"]).to(device)


def bare_loop(model, bare: BareData, params: dict, device) -> tuple[float, float, int]:
    """The same training as real_loop with nothing around it: randperm, index, forward,
    loss, backward, step. Returns (wall seconds, seconds without the first step, images)."""
    device = torch.device(device)
    torch.manual_seed(params["seed"])
    model = model.to(device).train()
    images = bare.images
    if params["channels_last"]:  # as the real loop, on every device
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    step_model = torch.compile(model) if params["compile"] else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(params["precision"])
    use_autocast = device.type == "cuda" and dtype is not None
    optimizer = optimization.make_optimizer(model, params["optimizer"])
    criterion = optimization.make_loss(params["loss"])
    generator = torch.Generator(device=device).manual_seed(params["seed"])
    batch, count = params["batch_size"], len(bare.labels)
    steps = count // batch
    started = time.perf_counter()
    first_step_seconds = None
    for _epoch in range(params["epochs"]):
        order = torch.randperm(count, device=device, generator=generator)
        for step in range(steps):
            indices = order[step * batch:(step + 1) * batch]
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=use_autocast):
                loss = criterion(step_model(images[indices]), bare.labels[indices])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if first_step_seconds is None:
                synchronize(device)
                first_step_seconds = time.perf_counter() - started
    synchronize(device)
    wall = time.perf_counter() - started
    return wall, wall - first_step_seconds, steps * batch * params["epochs"]


# ---------------------------------------------------------------- interleaved rounds

def overhead(spec, data: dict, params: dict, device, rounds: int) -> dict:
    """Median images/s of both loops and median ratios over interleaved rounds (the
    order alternates, so drifts in the machine's load hit both sides alike)."""
    device = torch.device(device)
    shape, num_classes = data["meta"]["input_shape"], len(data["meta"]["classes"])
    bare = BareData(data, device)

    def run(kind):
        model = spec_model(spec, shape, num_classes, params["seed"])
        if kind == "real":
            return real_loop(model, data, params, device)
        return bare_loop(model, bare, params, device)

    run("real"), run("bare")  # warm-up: allocator, cudnn.benchmark, first imports
    rates = {"real": [], "bare": [], "real_loop": [], "bare_loop": []}
    for index in range(rounds):
        for kind in (("real", "bare") if index % 2 == 0 else ("bare", "real")):
            wall, in_loop, images = run(kind)
            steps = images // params["batch_size"]
            rates[kind].append(images / wall)
            # the in-loop clocks leave out one step
            rates[f"{kind}_loop"].append(images * (steps - 1) / steps / max(in_loop, 1e-9))
    whole = [r / b for r, b in zip(rates["real"], rates["bare"])]
    in_loop = [r / b for r, b in zip(rates["real_loop"], rates["bare_loop"])]
    return {"real_images_per_s": statistics.median(rates["real"]),
            "bare_images_per_s": statistics.median(rates["bare"]),
            "ratio_whole_call": statistics.median(whole),
            "ratio_in_loop": statistics.median(in_loop),
            "rounds": rounds}


# ---------------------------------------------------------------- operations per step (no clock needed)

class _CountOperations(TorchDispatchMode):
    """Counts every aten operation dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def operations_per_step(spec, batch: int = 16) -> dict:
    """aten operations each loop dispatches per training step, on CPU: the difference
    between an epoch of 8 steps and one of 4, so setup and per-epoch work cancel out.
    On a GPU each operation is a kernel launch or a view, so what the real loop adds
    here is what it adds to every step there."""
    params = loop_params(batch, epochs=1)

    def count(kind: str, steps: int) -> int:
        data = random_prepared(batch * steps, 0)
        shape, num_classes = data["meta"]["input_shape"], len(data["meta"]["classes"])
        model = spec_model(spec, shape, num_classes, 0)
        bare = BareData(data, torch.device("cpu")) if kind == "bare" else None
        with _CountOperations() as counter:
            if kind == "real":
                train(model, data, params, "cpu")
            else:
                bare_loop(model, bare, params, "cpu")
        return counter.count

    return {kind: (count(kind, 8) - count(kind, 4)) / 4 for kind in ("real", "bare")}


# ---------------------------------------------------------------- pytest-benchmark (timings printed, never asserted)

def _tiny_setup():
    data = random_prepared(256, 0)
    params = loop_params(batch_size=64, epochs=1)
    return data, params


def test_real_training_loop(benchmark):
    data, params = _tiny_setup()
    spec = ROOT / "specs" / "simcnn.yaml"
    benchmark.pedantic(lambda: real_loop(spec_model(spec, CIFAR_SHAPE, 10, 0), data, params, "cpu"),
                       rounds=3, iterations=1)


def test_bare_training_loop(benchmark):
    data, params = _tiny_setup()
    spec, bare = ROOT / "specs" / "simcnn.yaml", BareData(data, torch.device("cpu"))
    benchmark.pedantic(lambda: bare_loop(spec_model(spec, CIFAR_SHAPE, 10, 0), bare, params, "cpu"),
                       rounds=3, iterations=1)


# ---------------------------------------------------------------- the script

def settings(args) -> dict:
    if args.quick:
        return {"spec": "simcnn", "images": 2048, "batch": 128, "epochs": 1, "rounds": 5}
    return {"spec": "speedrun94", "images": 50_000, "batch": 1024, "epochs": 2, "rounds": 5}


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="small sizes for a CPU")
    parser.add_argument("--spec", help="spec name under specs/ or a path")
    parser.add_argument("--images", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--epochs", type=int, help="epochs per round")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model in both loops (the first step holds the compile)")
    args = parser.parse_args(argv)
    chosen = settings(args)
    chosen.update({key: value for key in chosen if (value := getattr(args, key)) is not None})
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    spec = Path(chosen["spec"]) if chosen["spec"].endswith(".yaml") else ROOT / "specs" / f"{chosen['spec']}.yaml"
    data = random_prepared(chosen["images"], 0)  # no validation: the bare loop has none
    params = loop_params(chosen["batch"], chosen["epochs"], compile=args.compile)
    figures = overhead(spec, data, params, device, chosen["rounds"])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"loop overhead: {spec.stem}, {chosen['images']} random {CIFAR_SHAPE} images, batch {chosen['batch']}, "
          f"{chosen['epochs']} epoch(s) per round, {figures['rounds']} interleaved rounds, {where}, "
          f"precision {params['precision'] if device.type == 'cuda' else 'fp32'}, "
          f"compile {'on' if params['compile'] else 'off'}")
    print(f"real loop {figures['real_images_per_s']:.0f} images/s, "
          f"bare loop {figures['bare_images_per_s']:.0f} images/s")
    print(f"median ratio real/bare: whole call {figures['ratio_whole_call']:.3f}, "
          f"in loop {figures['ratio_in_loop']:.3f} (target on a GPU >= 0.95)")
    operations = operations_per_step(spec)
    print(f"aten operations per training step (counted on CPU, batch 16): real loop {operations['real']:.0f}, "
          f"bare loop {operations['bare']:.0f}, added by the loop {operations['real'] - operations['bare']:.0f}")
    return figures


if __name__ == "__main__":
    main()
