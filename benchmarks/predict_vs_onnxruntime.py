"""`cnnspec predict`'s forward pass on a CPU against onnxruntime on the exported model:
the same images, batch and threads.

    python benchmarks/predict_vs_onnxruntime.py                         # fashion_cpu, batch 64
    python benchmarks/predict_vs_onnxruntime.py --spec specs/simcnn.yaml --batch-size 256

Makes a checkpoint of the spec with random weights (speed does not depend on them),
loads it as `cnnspec predict` does (`cnnspec.inference.predict.load_model`: normalization
in front, softmax behind), exports it with `cnnspec export`'s ONNX writer, and times
both on the first Fashion-MNIST test images (float pixels in 0..1, the ONNX input):
`probabilities_of`, the forward pass `cnnspec predict` runs on each decoded batch (and
again with the network's weights in the channels-last layout too) and an onnxruntime
session with as many intra-op threads as torch uses. Prints images/s for each, the ratio
and the largest probability difference; asserts nothing. Needs onnxruntime (`pip install 'cnnspec[export]'`).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")


def best_of(run, rounds: int) -> float:
    """Median seconds of `rounds` calls after one warm-up call."""
    run()
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "specs" / "fashion_cpu.yaml")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, help="torch and onnxruntime threads (default: torch's own)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data", type=Path, default=FASHION, help="folder of the Fashion-MNIST .gz files")
    args = parser.parse_args(argv)

    import onnxruntime

    import cnnspec
    from cnnspec.data.datasets import read_idx
    from cnnspec.inference.export import _export_onnx
    from cnnspec.inference.predict import load_model, probabilities_of
    from cnnspec.models.checkpoint import save_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    pixels = read_idx(args.data / "t10k-images-idx3-ubyte.gz", rank=3)[:args.images]
    images = torch.from_numpy(np.array(pixels[:, None])).float() / 255
    batches = list(images.split(args.batch_size))
    spec = cnnspec.load_spec(args.spec)
    meta = {"classes": [str(i) for i in range(10)], "mean": [0.286], "std": [0.353], "input_shape": [1, 28, 28]}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        save_checkpoint(folder / "model.pt", cnnspec.build_model(spec, (1, 28, 28), 10).eval(), spec, meta, {}, 0, 0)
        model = load_model(folder / "model.pt", "cpu")
        _export_onnx(model, batches[0], folder / "model.onnx", opset=17)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options,
                                               providers=["CPUExecutionProvider"])

        def torch_pass():  # what `cnnspec predict` runs on a decoded batch
            return [probabilities_of(model, batch) for batch in batches]

        def onnx_pass():
            return [session.run(["probabilities"], {"images": batch.numpy()})[0] for batch in batches]

        difference = max(float(np.abs(ours.numpy() - theirs).max())
                         for ours, theirs in zip(torch_pass(), onnx_pass()))
        seconds = {"torch (cnnspec predict)": best_of(torch_pass, args.rounds),
                   "onnxruntime": best_of(onnx_pass, args.rounds)}
        model.network.to(memory_format=torch.channels_last)
        seconds["torch, network in channels-last too"] = best_of(torch_pass, args.rounds)
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"{args.spec.name}: {len(images)} Fashion-MNIST test images, batch {args.batch_size}, {threads} threads "
          f"(torch {torch.__version__}, onnxruntime {onnxruntime.__version__}), load {load}, "
          f"median of {args.rounds} passes")
    rates = {name: len(images) / value for name, value in seconds.items()}
    for name, rate in rates.items():
        print(f"{name}: {rate:,.0f} images/s")
    print(f"onnxruntime / torch: {rates['onnxruntime'] / rates['torch (cnnspec predict)']:.2f}x; "
          f"largest probability difference {difference:.1e}")
    return rates


if __name__ == "__main__":
    main()
