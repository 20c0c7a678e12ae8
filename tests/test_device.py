"""One device chooser for training, evaluation and `cnnspec predict`
(cnnspec/training/device.py): the words it takes and its one-line refusals."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnspec.errors import ParamsError, TrainingError, UsageError
from cnnspec.training.device import autocast_dtype, pick_device, to_layout

ROOT = Path(__file__).resolve().parent.parent


def test_auto_and_cpu():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_word_that_is_no_device_names_where_it_was_written():
    with pytest.raises(UsageError, match=r"^--device: expected auto, cpu, cuda, cuda:N or mps, not 'gpu0'$"):
        pick_device("gpu0", "--device", UsageError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_without_cuda_is_one_line_in_each_callers_words():
    with pytest.raises(ParamsError, match=r"^params.yaml: train.device: cuda:1 is not available") as caught:
        pick_device("cuda:1")
    assert caught.value.exit_code == 2  # a params.yaml mistake, as the README's exit codes say
    with pytest.raises(UsageError, match=r"^--device: cuda is not available on this machine .*use auto or cpu$"):
        pick_device("cuda", "--device", UsageError)


def test_predict_and_evaluate_use_this_chooser():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "cnnspec" / "inference"
    for name in ("predict.py", "evaluation.py"):
        text = (root / name).read_text(encoding="utf-8")
        assert "pick_device" in text and "torch.cuda.is_available" not in text, name


def test_precision_is_off_on_a_cpu_and_channels_last_only_when_asked(monkeypatch):
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "bf16") is None
    from cnnspec.training import device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    assert autocast_dtype(cpu, "off", "bf16") is torch.bfloat16 and autocast_dtype(cpu, "bf16", "off") is None
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    assert autocast_dtype(cpu, "bf16", "bf16") is None

    monkeypatch.setattr(device, "CUDA_PATHS_ON_CPU", True)
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16 and autocast_dtype(cpu, "off") is None
    images = torch.zeros(2, 3, 4, 4)
    assert to_layout(images, False) is images
    assert to_layout(images, True).is_contiguous(memory_format=torch.channels_last)


FAULTS_OF_TWENTY_BATCHES = """
import resource, sys, torch
from cnnspec.training.device import reuse_freed_memory
if sys.argv[1] == "reuse":
    reuse_freed_memory()
conv = torch.nn.Conv2d(1, 32, 3)
images = torch.randn(128, 1, 28, 28)  # 11 MB of activations a batch, as simcnn's first layer
with torch.inference_mode():
    conv(images).relu()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        conv(images).relu()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


# glibc starts at mmap and trim thresholds of 128 KiB and raises them after some large
# frees, so a process left alone faults in every batch's memory again, or, now and then,
# when the order of frees lets the raise stick, only the first batch's. The processes
# that count faults start pinned to the starting thresholds (which also turns the
# raising off), and reuse_freed_memory then overrides them.
GLIBC_START = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
def test_batch_after_batch_reuses_the_memory_instead_of_faulting_it_in_again():
    """Counted in page faults, not seconds: without reuse_freed_memory every batch's
    activations are handed back to the system and faulted in again (105,000 to 160,000
    pages here)."""

    def faults(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", FAULTS_OF_TWENTY_BATCHES, mode], capture_output=True,
                              text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="1", **GLIBC_START))
        return int(done.stdout)

    default, reused = faults("default"), faults("reuse")
    assert default > 20 * 1000  # 11 MB is 2,700 pages, twice a batch
    assert reused < default / 20


FAULTS_OF_TWO_TRAININGS = """
import resource, cnnspec
from cnnspec.training import loop
from tests.fakedata import prepared_data
from tests.tinytraining import train_params

SPEC = ("{name: wide, layers: [{conv: {filters: 32, padding: same}}, bn, {activation: relu}, "
        "global_avg_pool, {dense: 3}]}")

def faults_of_training() -> int:
    model = cnnspec.build_model(cnnspec.parse_spec(SPEC, "wide.yaml"), (1, 28, 28), 3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    loop.train(model, prepared_data(640, 64, shape=(1, 28, 28)), train_params(epochs=4, batch_size=64), "cpu")
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

real = loop.reuse_freed_memory
loop.reuse_freed_memory = lambda: None  # the first training as glibc's defaults leave it
print("faults", faults_of_training())
loop.reuse_freed_memory = real
print("faults", faults_of_training())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
def test_training_on_a_cpu_reuses_each_step_s_memory_instead_of_faulting_it_in_again():
    """40 steps whose activations are 6 MB a tensor (batch 64, 32 channels at 28x28):
    with glibc's defaults every step faults its memory in again (a fifth of a
    fashion_cpu step's time); training keeps it, so only the first step does."""
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_TWO_TRAININGS], capture_output=True, text=True,
                          check=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
                                                         **GLIBC_START))
    default, reused = (int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("faults"))
    assert default > 40 * 1500  # 6 MB is 1,500 pages, and a step has several such tensors
    assert reused < default / 4


def test_the_evaluate_stage_and_predict_reuse_freed_memory():
    for source in ("stages/evaluate.py", "cnnspec/inference/predict.py"):
        assert "reuse_freed_memory()" in (ROOT / source).read_text(encoding="utf-8"), source


def test_a_batch_whose_activations_cannot_fit_stops_before_the_first_step(monkeypatch):
    import cnnspec
    from cnnspec.training import device as device_module
    from cnnspec.training import loop
    from tests.fakedata import prepared_data
    from tests.tinytraining import train_params

    spec = cnnspec.parse_spec("{name: wide, layers: [{conv: {filters: 32, padding: same}}, global_avg_pool, "
                              "{dense: 3}]}", "wide.yaml")
    model = cnnspec.build_model(spec, (1, 28, 28), 3)
    assert model.activation_bytes == 4 * (32 * 28 * 28 + 32 + 3)  # the conv's, the pool's and the logits
    real_free = device_module.available_memory(torch.device("cpu"))
    assert real_free is None or real_free > 1 << 20  # /proc/meminfo's MemAvailable, where there is one
    free = 64 * model.activation_bytes  # as if the machine had room for 64 images' activations
    monkeypatch.setattr(device_module, "available_memory", lambda device: free)

    def no_step(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(loop, "DeviceData", no_step)
    with pytest.raises(TrainingError) as caught:
        loop.train(model, prepared_data(640, 64, shape=(1, 28, 28)), train_params(batch_size=128), "cpu")
    assert str(caught.value) == ("train.batch_size 128 of 1x28x28 images keeps about 12.3 MiB of activations a "
                                 "step, and this machine has 6.1 MiB free: lower train.batch_size or "
                                 "data.image_size")
    monkeypatch.undo()
    result = loop.train(model, prepared_data(64, 8, shape=(1, 28, 28)), train_params(epochs=1, batch_size=32), "cpu")
    assert len(result.history) == 1  # a batch that fits trains as before
