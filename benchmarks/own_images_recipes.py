"""Which recipe should a small own-image dataset start from? The own-images default
(`model.spec: auto` -> specs/small_images.yaml and its recipe) against variants with more
or less of the CPU speedrun's ideas, each trained by the train stage's own code (its batch capped
for 20 steps an epoch, as resolve caps it) on the first N images of real Fashion-MNIST,
what a first folder of one's own images holds, and scored on 2,000 test images.

    python benchmarks/own_images_recipes.py                          # 300, 1000, 3000 images, 3 seeds
    python benchmarks/own_images_recipes.py --sizes 500 --seeds 2 --candidates shipped ema

Each candidate is a list of `-S` overrides on the shipped params.yaml. Prints one line
per run, then the mean test accuracy and training seconds per size; asserts nothing.
Needs Debian's dataset-fashion-mnist.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPEC = ["model.spec=specs/small_images.yaml", "train.device=cpu"]
# -S overrides on the shipped params.yaml: the own-images default as it is, as it was
# before it took the speedrun's bf16 and label smoothing, and with more of the speedrun
CANDIDATES = {
    "shipped": [],
    "fp32_no_smoothing": ["train.cpu_precision=off", "train.loss.label_smoothing=0.0"],
    "lookahead": ["train.lookahead.enabled=true"],
    "ema": ["train.ema.enabled=true", "train.ema.decay=0.99"],
    "onecycle": ["train.scheduler.name=onecycle", "train.scheduler.warmup_epochs=0.2"],
    "fashion_cpu": ["recipe=fashion_cpu", "train.augment.hflip=false", "train.augment.translate=2",
                    "train.epochs=15", "evaluate.tta=none"],
}


def candidate_params(overrides: list[str], seed: int, folder: Path) -> tuple[Path, dict]:
    """folder/params.yaml: the shipped params.yaml with a candidate's overrides, and what
    the train stage reads from it (its recipe merged and checked)."""
    from dvc.utils.hydra import apply_overrides

    from cnnspec.pipeline.params import load_params

    params_path = folder / "params.yaml"
    shutil.copyfile(ROOT / "params.yaml", params_path)
    apply_overrides(params_path, SPEC + overrides + [f"train.seed={seed}"])
    return params_path, load_params(params_path)


def one_run(prepared: Path, overrides: list[str], seed: int, folder: Path) -> tuple[float, float]:
    """(test accuracy, training seconds) of one run of the train stage's code."""
    from cnnspec.inference.evaluation import evaluate_checkpoint
    from stages.train import run

    params_path, params = candidate_params(overrides, seed, folder)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run(params_path, prepared, folder / "model.pt", folder / "resume.pt", folder / "log")
    seconds = time.perf_counter() - started
    report, _, _ = evaluate_checkpoint(folder / "model.pt", prepared, tta=params["evaluate"]["tta"],
                                       batch_size=500, device="cpu")
    return report["accuracy"], seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 3000], help="training images")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--candidates", nargs="+", choices=sorted(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--test-images", type=int, default=2000)
    args = parser.parse_args(argv)

    from tests.fashion import FASHION, write_subset  # the test suite's Fashion-MNIST subsets

    if not FASHION.is_dir():
        sys.exit(f"error: {FASHION} is missing: apt-get install dataset-fashion-mnist")
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    # in the repository, model.spec and recipes/ are read as `dvc repro` reads them
    with contextlib.chdir(ROOT), tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            prepared = write_subset(Path(scratch) / f"prepared_{size}", n_train=size, n_val=200,
                                    n_test=args.test_images)
            for seed in range(args.seeds):
                for name in args.candidates:  # interleaved, so a drifting host hurts all alike
                    folder = Path(scratch) / f"{size}_{name}_{seed}"
                    folder.mkdir()
                    accuracy, seconds = one_run(prepared, CANDIDATES[name], seed, folder)
                    results.setdefault((size, name), []).append((accuracy, seconds))
                    print(f"{size} images, seed {seed}, {name}: {accuracy:.2%} test accuracy, "
                          f"{seconds:.1f} s of training", flush=True)
    print("\n| training images | candidate | test accuracy (mean, min-max) | training seconds (mean) |")
    print("| --- | --- | --- | --- |")
    for (size, name), runs in results.items():
        accuracies = [accuracy for accuracy, _ in runs]
        print(f"| {size} | {name} | {statistics.mean(accuracies):.2%} ({min(accuracies):.2%}-{max(accuracies):.2%}) "
              f"| {statistics.mean(seconds for _, seconds in runs):.1f} |")


if __name__ == "__main__":
    main()
