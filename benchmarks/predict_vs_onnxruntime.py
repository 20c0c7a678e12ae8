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
session with as many intra-op threads as torch uses. Then what `cnnspec predict` now does
with its default engine (auto) for that many images, timed end to end from the checkpoint
file: load, the in-memory ONNX export and session when auto takes onnxruntime (its cost
amortized over the images), the forward passes. `--images` above the 10,000 test images
repeats them. Prints images/s for each, the ratio, the largest probability difference,
the export's cost (the first in the process, with its imports, and again) and the image
count from which onnxruntime wins that cost back at these rates; asserts nothing.
Needs onnxruntime (`pip install 'cnnspec[export]'`).
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
    from cnnspec.inference import predict
    from cnnspec.inference.export import _export_onnx
    from cnnspec.inference.onnx_model import OnnxModel
    from cnnspec.models.checkpoint import save_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    pixels = np.array(read_idx(args.data / "t10k-images-idx3-ubyte.gz", rank=3))
    pixels = np.resize(pixels, (args.images, *pixels.shape[1:]))  # repeated past the file's count
    images = torch.from_numpy(pixels[:, None]).float() / 255
    batches = list(images.split(args.batch_size))
    spec = cnnspec.load_spec(args.spec)
    meta = {"classes": [str(i) for i in range(10)], "mean": [0.286], "std": [0.353], "input_shape": [1, 28, 28]}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        save_checkpoint(folder / "model.pt", cnnspec.build_model(spec, (1, 28, 28), 10).eval(), spec, meta, {}, 0, 0)
        model = predict.load_model(folder / "model.pt", "cpu")
        started = time.perf_counter()  # before anything here has imported onnx or run an export
        OnnxModel.from_model(model)
        export_seconds = {"first": time.perf_counter() - started,
                          "again": best_of(lambda: OnnxModel.from_model(model), args.rounds)}
        chosen = []

        def auto_pass():  # `cnnspec predict`'s default engine, from the file to the probabilities
            runner = predict.with_engine(predict.load_model(folder / "model.pt", "cpu"), len(images))
            chosen[:] = ["onnxruntime" if isinstance(runner, OnnxModel) else "torch"]
            if isinstance(runner, predict.InferenceModel):
                predict.in_fast_layout(runner)
                return [predict.probabilities_of(runner, batch) for batch in batches]
            return [runner.probabilities(batch) for batch in batches]

        _export_onnx(model, batches[0], folder / "model.onnx", opset=17)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options,
                                               providers=["CPUExecutionProvider"])

        def torch_pass():  # what `cnnspec predict` runs on a decoded batch
            return [predict.probabilities_of(model, batch) for batch in batches]

        def onnx_pass():
            return [session.run(["probabilities"], {"images": batch.numpy()})[0] for batch in batches]

        difference = max(float(np.abs(ours.numpy() - theirs).max())
                         for ours, theirs in zip(torch_pass(), onnx_pass()))
        seconds = {"torch (cnnspec predict)": best_of(torch_pass, args.rounds),
                   "onnxruntime": best_of(onnx_pass, args.rounds)}
        model.network.to(memory_format=torch.channels_last)
        seconds["torch, network in channels-last too"] = best_of(torch_pass, args.rounds)
        seconds["cnnspec predict, engine auto, end to end"] = best_of(auto_pass, args.rounds)
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"{args.spec.name}: {len(images)} Fashion-MNIST test images, batch {args.batch_size}, {threads} threads "
          f"(torch {torch.__version__}, onnxruntime {onnxruntime.__version__}), load {load}, "
          f"median of {args.rounds} passes")
    rates = {name: len(images) / value for name, value in seconds.items()}
    for name, rate in rates.items():
        print(f"{name}: {rate:,.0f} images/s")
    print(f"onnxruntime / torch: {rates['onnxruntime'] / rates['torch (cnnspec predict)']:.2f}x; "
          f"largest probability difference {difference:.1e}")
    saved = 1 / rates["torch, network in channels-last too"] - 1 / rates["onnxruntime"]  # seconds an image
    print(f"engine auto chose {chosen[0]} for {len(images)} images "
          f"(onnxruntime from {predict.ONNXRUNTIME_MIN_IMAGES:,}); "
          f"in-memory export + session: {export_seconds['first']:.2f} s the first in the process, "
          f"{export_seconds['again']:.2f} s again; onnxruntime saves {saved * 1e6:.0f} us an image, so it pays "
          + (f"from {export_seconds['first'] / saved:,.0f} images" if saved > 0 else "at no image count"))
    if chosen[0] == "onnxruntime":  # a `cnnspec predict` process pays the first export's cost, imports included
        cold = len(images) / (len(images) / rates["cnnspec predict, engine auto, end to end"]
                              - export_seconds["again"] + export_seconds["first"])
        print(f"cnnspec predict, engine auto, end to end with the first export's cost: {cold:,.0f} images/s")
    return rates


if __name__ == "__main__":
    main()
