"""The comparison means something only if the four train the same network: equal
parameter counts and equal outputs from the same initial weights, checked before any
training (BenchmarkMismatch stops the benchmark otherwise)."""
from __future__ import annotations

import numpy as np
import torch

from benchmarks.versus_peers import keras_fit, torch_models
from benchmarks.versus_peers.cnnspec_train import cnnspec_model
from benchmarks.versus_peers.data import BenchmarkMismatch, Task


def start_logits(task: Task, images: int = 32) -> dict[str, np.ndarray]:
    """Each model builder's output on the first test images before training, in eval
    mode, as log-probabilities (a Keras model that ends in a softmax gives probabilities)."""
    batch = task.normalized(task.test_images[:images])
    outputs = {}
    for name, model in (("cnnspec", cnnspec_model(task)), ("torch", torch_models.torch_model(task))):
        with torch.no_grad():
            outputs[name] = torch.log_softmax(model.eval()(torch.from_numpy(batch)), 1).numpy()
    model = keras_fit.keras_model(task)
    predicted = torch.as_tensor(model(batch.transpose(0, 2, 3, 1).copy(), training=False)).detach().cpu().float()
    outputs["keras"] = (torch.log_softmax(predicted, 1) if keras_fit.keras_logits(model) else predicted.log()).numpy()
    return outputs


def check_same_start(task: Task, tolerance: float = 1e-4) -> float:
    """Stops the benchmark unless cnnspec, the hand-written torch module (Lightning and
    plain) and Keras give the same outputs from their copied initial weights; returns
    the largest difference."""
    outputs = start_logits(task)
    worst = max(float(np.abs(outputs[name] - outputs["cnnspec"]).max()) for name in ("torch", "keras"))
    if not worst <= tolerance:
        listed = ", ".join(f"{name} {float(np.abs(out - outputs['cnnspec']).max()):.2e}" for name, out in outputs.items())
        raise BenchmarkMismatch(f"{task.model}: the frameworks do not start from the same weights: largest "
                                f"log-probability difference to cnnspec {listed} (> {tolerance:g})")
    return worst


def parameter_counts(task: Task) -> dict[str, tuple[int, int]]:
    """(trainable, non-trainable) per framework; raises when they differ."""
    counts = {"cnnspec": torch_models.torch_counts(cnnspec_model(task)), "keras": keras_fit.keras_counts(keras_fit.keras_model(task))}
    counts["lightning"] = counts["plain"] = torch_models.torch_counts(torch_models.torch_model(task))  # the same nn.Module
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{name} {t:,} trainable + {n:,} non-trainable" for name, (t, n) in counts.items())
        raise BenchmarkMismatch(f"{task.model}: parameter counts differ ({listed}); not the same network")
    return counts
