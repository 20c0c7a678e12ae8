"""Spec overhead: forward+backward of the spec-built SimCNN against the same network
written by hand, in the same process, in interleaved rounds. Prints the median ratio
(target: at most 1.02). Never asserts a timing.

    python benchmarks/bench_spec_overhead.py [--rounds 30] [--batch 64]
    pytest benchmarks/bench_spec_overhead.py --benchmark-enable
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnnspec.models.compiler import build_model  # noqa: E402

SPEC = ROOT / "specs" / "simcnn.yaml"


class HandWrittenSimCNN(nn.Module):
    """specs/simcnn.yaml, by hand."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(1024, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def models():
    torch.manual_seed(0)
    spec_model = build_model(SPEC, num_classes=10)
    hand = HandWrittenSimCNN()
    hand.load_state_dict(dict(zip(hand.state_dict(), spec_model.state_dict().values())))
    return spec_model, hand


def step(model, images, labels):
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(images), labels).backward()


def seconds(model, images, labels, repeats):
    start = time.perf_counter()
    for _ in range(repeats):
        step(model, images, labels)
    return (time.perf_counter() - start) / repeats


def overhead_ratio(rounds=30, batch=64, repeats=3) -> tuple[float, float, float]:
    spec_model, hand = models()
    images, labels = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    for model in (spec_model, hand):  # warm-up
        seconds(model, images, labels, 2)
    ratios, spec_times, hand_times = [], [], []
    for index in range(rounds):
        order = (spec_model, hand) if index % 2 == 0 else (hand, spec_model)
        times = {id(model): seconds(model, images, labels, repeats) for model in order}
        spec_times.append(times[id(spec_model)])
        hand_times.append(times[id(hand)])
        ratios.append(times[id(spec_model)] / times[id(hand)])
    return statistics.median(ratios), statistics.median(spec_times), statistics.median(hand_times)


# pytest-benchmark: the two models side by side (timings printed, never asserted).
def test_spec_model_forward_backward(benchmark):
    spec_model, _ = models()
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    benchmark(step, spec_model, images, labels)


def test_hand_written_forward_backward(benchmark):
    _, hand = models()
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    benchmark(step, hand, images, labels)


def test_same_computation():
    """The comparison is fair: both models compute the same logits."""
    spec_model, hand = models()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(spec_model(x), hand(x))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ratio, spec_s, hand_s = overhead_ratio(args.rounds, args.batch)
    print(f"simcnn forward+backward, batch {args.batch}, {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} threads, CPU")
    print(f"spec-built {spec_s * 1e3:.2f} ms, hand-written {hand_s * 1e3:.2f} ms, "
          f"median ratio {ratio:.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
