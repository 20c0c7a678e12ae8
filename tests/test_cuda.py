"""The CUDA-only paths of the training loop, on a real GPU: bf16 and fp16 (grad
scaler) autocast, channels_last, torch.compile, the host-memory streaming fallback, a
real out-of-memory error, deterministic mode, evaluation on the device, a pinned
`cuda:N`, and data-parallel training on two GPUs (NCCL, with and without SyncBatchNorm).

Skipped where torch sees no GPU (CI, the 2-core workplace machines). The CPU suite runs
the same code through the `cuda_paths_on_cpu` fixture (tests/conftest.py); this file checks what only a GPU can show.
Run on a GPU machine: `python -m pytest tests/test_cuda.py -q`.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnspec
from cnnspec.errors import ParamsError, TrainingError
from cnnspec.inference.evaluation import predict_probabilities
from cnnspec.training import device as placement
from cnnspec.training import loop as training
from tests.tinytraining import tiny_data, tiny_model, train_params, write_stage_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_run(**options):
    params = train_params(**{"epochs": 4, **options})
    return training.train(tiny_model(), tiny_data(), params, "cuda")


@pytest.mark.parametrize("precision", ["bf16", "fp16", "off"])
def test_each_precision_learns_on_the_gpu(precision):
    result = cuda_run(precision=precision, channels_last=True)
    losses = [record["train/loss"] for record in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert next(result.model.parameters()).device.type == "cuda"


def test_the_dataset_lives_on_the_gpu_as_uint8():
    data = placement.DeviceData(tiny_data(), torch.device("cuda"))
    assert data.resident and data.train_images.is_cuda and data.train_images.dtype == torch.uint8


def test_streaming_fallback_trains_the_same_weights(monkeypatch):
    resident = cuda_run(deterministic=True, precision="off")
    monkeypatch.setattr(placement, "DEVICE_MEMORY_SHARE", 0.0)
    assert not placement.DeviceData(tiny_data(), torch.device("cuda")).resident
    streamed = cuda_run(deterministic=True, precision="off")
    assert streamed.history == pytest.approx(resident.history, rel=1e-5)


def test_deterministic_mode_repeats_exactly_on_the_gpu():
    first = cuda_run(deterministic=True)
    second = cuda_run(deterministic=True)
    assert first.history == second.history


def test_compiled_training_matches_eager_on_the_gpu(monkeypatch):
    import torch._inductor.config

    # Inductor draws dropout's masks its own way unless told to fall back to eager's: with
    # other masks the losses differ by about 3e-3 (measured on a CPU)
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    eager = cuda_run(precision="off", epochs=1)
    compiled = cuda_run(precision="off", epochs=1, compile=True)
    assert compiled.history[0]["train/loss"] == pytest.approx(eager.history[0]["train/loss"], rel=1e-3)


def test_real_out_of_memory_names_the_batch_size_and_leaves_the_gpu_usable(monkeypatch):
    huge = """name: huge
layers:
  - conv: {filters: 8192, kernel: 3}
  - conv: {filters: 8192, kernel: 3}
  - global_avg_pool
  - dense: num_classes
"""
    torch.manual_seed(0)
    model = cnnspec.build_model(cnnspec.parse_spec(huge, "huge.yaml"), (3, 64, 64), 3)
    rng = np.random.default_rng(0)
    data = tiny_data()
    data["train_images"] = rng.integers(0, 256, (4096, 3, 64, 64), dtype=np.uint8)
    data["train_labels"] = (np.arange(4096) % 3).astype(np.int64)
    data["val_images"] = data["train_images"][:8]
    data["val_labels"] = data["train_labels"][:8]
    data["meta"] = {**data["meta"], "input_shape": [3, 64, 64]}
    params = train_params(epochs=1, batch_size=4096, precision="off")
    # the pre-check refuses it first (about 1 TiB of activations a step) ...
    with pytest.raises(TrainingError, match=r"train.batch_size 4096 of 3x64x64 images keeps about .* this GPU has"):
        training.train(model, data, params, "cuda")
    # ... and without it, the real out-of-memory error of the first step is named
    monkeypatch.setattr(training, "check_step_memory", lambda *args, **kwargs: None)
    with pytest.raises(TrainingError, match=r"out of memory.*train.batch_size 4096; try train.batch_size 2048"):
        training.train(model, data, params, "cuda")
    del model
    torch.cuda.empty_cache()
    assert cuda_run(epochs=1).history[0]["train/loss"] > 0


def test_evaluation_on_the_gpu_matches_the_cpu():
    model = tiny_model().eval()
    images = tiny_data()["val_images"]
    options = {"tta": "flip_translate", "batch_size": 2000}
    on_gpu = predict_probabilities(model, images, [0.5] * 3, [0.3] * 3, **options, device="cuda")
    on_cpu = predict_probabilities(model.cpu(), images, [0.5] * 3, [0.3] * 3, **options, device="cpu")
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-6)


def test_pinned_gpu_that_is_not_there_is_one_line():
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ParamsError, match=f"train.device: {missing}, but this machine shows"):
        placement.pick_device(missing)
    assert placement.pick_device("cuda:0") == torch.device("cuda", 0)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("sync_bn", [False, True])
def test_two_gpus_train_with_nccl_through_the_stage(tmp_path, sync_bn):
    """train.devices: 2 on CUDA: two NCCL ranks, each holding the data on its own GPU,
    batch norm synchronised or not; the checkpoint loads in one process."""
    from cnnspec.models.checkpoint import load_network

    write_stage_inputs(tmp_path, device="cuda", devices=2, sync_bn=sync_bn, epochs=3, batch_size=16)
    root = Path(__file__).resolve().parent.parent
    finished = subprocess.run([sys.executable, str(root / "stages" / "train.py")], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(root)})
    assert finished.returncode == 0, finished.stderr
    assert "on 2 processes (cuda, nccl)" in finished.stdout
    model, checkpoint = load_network(tmp_path / "models" / "model.pt")
    assert not any(key.startswith("module.") for key in checkpoint["state_dict"])
