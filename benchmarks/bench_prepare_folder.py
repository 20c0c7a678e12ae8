"""Preprocess speed and memory on a generated folder of small JPEGs.

    python benchmarks/bench_prepare_folder.py --sizes 50000 100000 --workdir /tmp/bench_folder

For each size: writes N 32x32 RGB JPEGs into ten class folders (Debian's Fashion-MNIST
images, each pasted at a random offset on a tinted background so every file differs;
written in parallel and kept for the next run), then runs the real preprocess stage
(`python stages/preprocess.py`, data.dataset: folder) as a child process and prints:
images/s, the stage process's peak RSS (VmHWM), the interpreter's RSS before the data
is touched, the decode window ("one chunk", cnnspec.data.user_datasets.WINDOW_BYTES), and the
largest peak RSS of any process of the tree (the decode workers included).

Target: stage peak RSS below interpreter + 1.5 x one chunk, whatever N (what still
grows with N is the list of file names, about 150 bytes an image).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
SIZE = 32

# Runs inside the child: the stage's main, then its own peak and baseline RSS.
DRIVER = """
import json, sys
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
sys.path.insert(0, {repo!r})
import numpy, PIL.Image, cnnspec.data.user_datasets, cnnspec.pipeline.params, cnnspec.data.datasets
baseline = status('VmRSS:')
sys.argv = ['stages/preprocess.py']
import runpy
stage = runpy.run_path({stage!r}, run_name='preprocess_stage')  # not __main__: it would end the process
try:
    stage['main']()
except SystemExit as exit:
    if exit.code:
        raise
print('BENCH ' + json.dumps({{'baseline': baseline, 'peak': status('VmHWM:')}}))
"""


_FASHION_CACHE: list = []


def fashion_images() -> tuple[np.ndarray, np.ndarray]:
    if _FASHION_CACHE:
        return _FASHION_CACHE[0]

    def idx(name, rank):
        raw = gzip.open(FASHION / name).read()
        return np.frombuffer(raw, np.uint8, offset=4 * (1 + rank))

    images = np.concatenate([idx("train-images-idx3-ubyte.gz", 3), idx("t10k-images-idx3-ubyte.gz", 3)])
    labels = np.concatenate([idx("train-labels-idx1-ubyte.gz", 1), idx("t10k-labels-idx1-ubyte.gz", 1)])
    _FASHION_CACHE.append((images.reshape(-1, 28, 28), labels))
    return _FASHION_CACHE[0]


def _write_range(folder: str, start: int, stop: int) -> None:
    from PIL import Image

    images, labels = fashion_images()
    rng = np.random.default_rng(start)
    for index in range(start, stop):
        source = index % len(images)
        tint = rng.integers(0, 80, size=3)
        canvas = np.broadcast_to(tint, (SIZE, SIZE, 3)).astype(np.uint8).copy()
        top, left = rng.integers(0, SIZE - 28 + 1, size=2)
        colour = rng.uniform(0.6, 1.0, size=3)
        patch = (images[source][:, :, None] * colour).astype(np.uint8)
        region = canvas[top:top + 28, left:left + 28]
        np.maximum(region, patch, out=region)
        path = Path(folder) / f"class_{labels[source]}" / f"{index:07d}.jpg"
        Image.fromarray(canvas).save(path, quality=90)


def generate(folder: Path, count: int, workers: int) -> float:
    """Write the JPEGs (unless a previous run left them); returns seconds spent."""
    marker = folder / ".complete"
    if marker.is_file() and marker.read_text() == str(count):
        return 0.0
    started = time.perf_counter()
    for label in range(10):
        (folder / f"class_{label}").mkdir(parents=True, exist_ok=True)
    step = 2000
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_range, *zip(*[(str(folder), s, min(s + step, count)) for s in range(0, count, step)])))
    marker.write_text(str(count))
    return time.perf_counter() - started


def link_subset(largest: Path, folder: Path, count: int) -> None:
    """The first `count` images of the largest set, as hard links (no second copy)."""
    marker = folder / ".complete"
    if marker.is_file() and marker.read_text() == str(count):
        return
    for path in largest.glob("class_*/*.jpg"):
        if int(path.stem) < count:
            target = folder / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(path, target)
    marker.write_text(str(count))


def measure(folder: Path, count: int) -> dict:
    """Run the preprocess stage on `folder` in a scratch directory; its figures."""
    with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
        params = {"data": {"dataset": "folder", "source": str(folder), "image_size": [SIZE, SIZE],
                           "channels": 3, "val_split": 0.1, "test_split": 0.2}}
        (Path(scratch) / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
        driver = DRIVER.format(repo=str(REPO_ROOT), stage=str(REPO_ROOT / "stages" / "preprocess.py"))
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", driver], cwd=scratch, stdout=subprocess.PIPE, text=True)
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        if status != 0:
            raise SystemExit(f"preprocess failed:\n{output}")
        figures = json.loads(output.split("BENCH ", 1)[1])
        prepared = Path(scratch) / "data" / "prepared"
        meta = json.loads((prepared / "meta.json").read_text())
        assert sum(meta["counts"].values()) == count, meta["counts"]
    from cnnspec.data.user_datasets import WINDOW_BYTES, default_workers

    return {"images": count, "seconds": seconds, "images_per_s": count / seconds,
            "baseline_mib": figures["baseline"] / 2**20, "peak_mib": figures["peak"] / 2**20,
            "chunk_mib": WINDOW_BYTES / 2**20, "tree_peak_mib": usage.ru_maxrss / 1024,
            "workers": default_workers()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cnnspec_bench_folder")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="for writing the JPEGs")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    largest = args.workdir / f"jpegs_{max(args.sizes)}"
    spent = generate(largest, max(args.sizes), args.workers)
    if spent:
        print(f"wrote {max(args.sizes)} JPEGs in {spent:.0f} s")
    for count in args.sizes:
        folder = args.workdir / f"jpegs_{count}"
        if count != max(args.sizes):
            link_subset(largest, folder, count)
        row = measure(folder, count)
        target = row["baseline_mib"] + 1.5 * row["chunk_mib"]
        print(f"{count} images: {row['images_per_s']:.0f} images/s ({row['seconds']:.1f} s, "
              f"{row['workers']} decode workers); stage peak RSS {row['peak_mib']:.0f} MiB "
              f"(interpreter {row['baseline_mib']:.0f} MiB + chunk {row['chunk_mib']:.0f} MiB; "
              f"target < {target:.0f} MiB: {'met' if row['peak_mib'] < target else 'NOT met'}); "
              f"largest process of the tree {row['tree_peak_mib']:.0f} MiB")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
