"""Throughput of `cnnspec predict` on image files: decode (Pillow, a few threads) + forward.

    python benchmarks/predict_throughput.py                       # 2000 Fashion-MNIST PNGs, CPU
    python benchmarks/predict_throughput.py --images 10000 --device cuda --batch-size 256

Writes the first N Fashion-MNIST test images (Debian's dataset-fashion-mnist) as PNG files
to a temporary folder, makes a checkpoint of the spec with random weights (the speed does
not depend on the weights), and times `inference.predict_files` over the folder, the work
of `cnnspec predict` between reading the checkpoint and writing the rows. Prints images/s
for the decode alone, the forward pass alone and the whole run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

FASHION = Path("/usr/share/datasets/fashion-mnist")
SPEC = Path(__file__).resolve().parent.parent / "tests" / "test_fashion_mnist.py"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=FASHION, help="folder of the Fashion-MNIST .gz files")
    args = parser.parse_args(argv)

    from PIL import Image

    import cnnspec
    from cnnspec.data.datasets import read_idx
    from cnnspec.data.images import read_image
    from cnnspec.inference.predict import load_model, predict_files
    from cnnspec.models.checkpoint import save_checkpoint

    images = read_idx(args.data / "t10k-images-idx3-ubyte.gz", rank=3)[:args.images]
    spec_text = SPEC.read_text().split('SPEC = """\\\n', 1)[1].split('"""', 1)[0]
    spec = cnnspec.parse_spec(spec_text, "fashion_small.yaml")
    meta = {"classes": [str(i) for i in range(10)], "mean": [0.286], "std": [0.353],
            "input_shape": [1, 28, 28]}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        model = cnnspec.build_model(spec, (1, 28, 28), 10).eval()
        save_checkpoint(folder / "model.pt", model, spec, meta, {}, 0, 0)
        paths = []
        for index, image in enumerate(images):
            path = folder / "images" / f"{index:05d}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(np.asarray(image)).save(path)
            paths.append(str(path))

        started = time.perf_counter()
        for path in paths:
            read_image(path, 1, (28, 28))
        decode = time.perf_counter() - started

        model = load_model(folder / "model.pt", args.device)
        predict_files(model, paths[:args.batch_size], batch_size=args.batch_size)  # warm-up
        batch = torch.from_numpy(np.ascontiguousarray(images[:args.batch_size, None])).to(args.device)
        started = time.perf_counter()
        with torch.inference_mode():
            for _ in range(5):
                model(batch)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        forward = (time.perf_counter() - started) / 5
        started = time.perf_counter()
        predictions = predict_files(model, paths, batch_size=args.batch_size)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        total = time.perf_counter() - started
    assert len(predictions) == len(paths) and not any(p.error for p in predictions)
    print(f"{len(paths)} PNG images 28x28, spec fashion_small, batch {args.batch_size}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"decode only (one thread): {len(paths) / decode:,.0f} images/s")
    print(f"forward only: {args.batch_size / forward:,.0f} images/s ({forward * 1000:.1f} ms a batch)")
    print(f"predict_files (decode in threads + forward): {len(paths) / total:,.0f} images/s "
          f"({total:.2f} s)")


if __name__ == "__main__":
    main()
