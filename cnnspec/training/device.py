"""Where the math runs and how: the one device chooser, the precision (autocast) and
the torch settings, shared by training, evaluation and `cnnspec predict`.

    device = pick_device(params["train"]["device"])             # params.yaml: train.device
    device = pick_device(args.device, "--device", UsageError)   # the predict command
    with torch_settings(device, deterministic), autocast(device, autocast_dtype(device, "bf16")):
        ...

Training puts images and weights in channels_last (`to_layout`) when
`train.channels_last` asks: oneDNN's convolutions train faster that way on a CPU too;
its images live on the device as uint8 when they fit (`DeviceData`).
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from cnnspec.data.datasets import Normalize
from cnnspec.errors import ParamsError, TrainingError

# Run autocast on CPU as on CUDA. Only tests and CPU benchmarks turn it on
# (tests/conftest.py's `cuda_paths_on_cpu` fixture): on a real CPU run it costs speed.
CUDA_PATHS_ON_CPU = False
DEVICE_WORDS = "auto, cpu, cuda, cuda:N or mps"
DEVICE_MEMORY_SHARE = 0.5  # the training data may take this share of free GPU memory
# Forward passes without gradients (validation, evaluate) on a CPU: batches of 64-128
# stay in the caches and run 1.3-2.8x faster than batches of 1,000-2,000 (measured on
# simcnn, fashion_cpu and resnet18_cifar, docs/benchmarks.md); a GPU wants large ones.
CPU_INFERENCE_BATCH = 128
MALLOC_TRIM_THRESHOLD, MALLOC_MMAP_THRESHOLD = -1, -3  # mallopt's options (glibc's malloc.h)


def pick_device(name: str = "auto", source: str = "params.yaml: train.device", error=ParamsError) -> torch.device:
    """`name` as a torch.device: auto (CUDA when there is one), cpu, cuda, cuda:N (one
    GPU of those CUDA_VISIBLE_DEVICES shows, to pin a queued experiment) or mps. A
    device this machine lacks is one `error` line naming `source`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise error(f"{source}: expected {DEVICE_WORDS}, not {name!r}") from None
    if device.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not available:
            raise error(f"{source}: {name} is not available on this machine (no CUDA device); use auto or cpu")
        if device.index is not None and device.index >= available:
            raise error(f"{source}: {name}, but this machine shows {available} CUDA "
                        f"device{'s' if available != 1 else ''} (cuda:0 to cuda:{available - 1})")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise error(f"{source}: mps is not available on this machine (Apple GPUs only); use auto or cpu")
    return device


def reuse_freed_memory() -> None:
    """For a process that runs batch after batch on a CPU (training, the evaluate stage,
    `cnnspec predict`): keep the memory of each batch's freed activations and gradients
    for the next one. glibc's malloc otherwise hands large freed blocks back to the
    system and page-faults them in again: with simcnn's 11 MB activations that was a
    third of the evaluate stage's forward time (1.3 s -> 0.8 s on 10,000 images), and
    about 20,000 page faults of each fashion_cpu training step, a fifth of its time. The
    memory kept is what the largest batch needed. Without glibc (macOS, musl) it does
    nothing. The setting is the process's: everything after it allocates this way."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(MALLOC_MMAP_THRESHOLD, 32 << 20)  # blocks up to 32 MB (glibc's most) come from the heap
    mallopt(MALLOC_TRIM_THRESHOLD, 1 << 30)  # and the heap keeps up to 1 GB free for reuse


def inference_batch(device: torch.device, gpu_batch: int) -> int:
    """The batch for forward passes without gradients: cache-sized on a CPU, `gpu_batch`
    elsewhere."""
    return CPU_INFERENCE_BATCH if device.type == "cpu" else gpu_batch


def _cuda_paths(device: torch.device) -> bool:
    """Whether the CUDA-only speed-up (autocast) applies on `device`."""
    return device.type == "cuda" or CUDA_PATHS_ON_CPU


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AMX or AVX512: x86 servers, recent desktops).
    Elsewhere bf16 is emulated and slower than fp32."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check and check())
    except RuntimeError:
        return False


def autocast_dtype(device: torch.device, precision: str, cpu_precision: str = "off"):
    """The autocast dtype of a run, or None for fp32: `precision` (bf16/fp16) on CUDA;
    on a CPU `cpu_precision` bf16 where the CPU has bf16 instructions (under
    CUDA_PATHS_ON_CPU, `precision` as on CUDA)."""
    if device.type == "cpu" and not CUDA_PATHS_ON_CPU:
        return torch.bfloat16 if cpu_precision == "bf16" and cpu_has_bf16() else None
    if precision == "off" or not _cuda_paths(device):
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype):
    """torch.autocast at `dtype` (autocast_dtype's answer), or nothing when it is None."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def to_layout(tensor, channels_last: bool):
    """A batch of images (or a model) in channels_last when asked, else as it is."""
    if not channels_last:
        return tensor
    if isinstance(tensor, torch.Tensor):
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor.to(memory_format=torch.channels_last)


@contextlib.contextmanager
def torch_settings(device: torch.device, deterministic: bool):
    """cudnn.benchmark for speed, or PyTorch's deterministic algorithms when asked;
    restored afterwards so a test process is left as it was."""
    before = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_deterministic(deterministic)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before[0]
        set_deterministic(before[1])


def set_deterministic(wanted: bool) -> None:
    # Only on a change: any call imports torch's compiler stack, about 1 s of every run's start.
    if torch.are_deterministic_algorithms_enabled() != wanted:
        # warn_only: an op with no deterministic CUDA kernel (adaptive pooling's backward,
        # bilinear resizing) says so in a warning instead of stopping the first step
        torch.use_deterministic_algorithms(wanted, warn_only=True)


# ---------------------------------------------------------------- the training data on the device

def available_memory(device: torch.device) -> int | None:
    """Bytes free for training on `device`: CUDA's free memory, the host's MemAvailable on
    Linux; None where it is not known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_step_memory(activation_bytes: int, batch_size: int, input_shape, device: torch.device) -> None:
    """TrainingError before the first step when a batch's activations alone (what the
    forward pass keeps for the backward one; `activation_bytes` is one image's, in the
    run's precision) exceed the memory `device` has free:
    the step could only end in an out-of-memory kill, after minutes of loading."""
    needed, free = activation_bytes * batch_size, available_memory(device)
    if free is None or needed <= free:
        return
    where = "GPU" if device.type == "cuda" else "machine"
    size = "x".join(str(int(v)) for v in input_shape)
    raise TrainingError(f"train.batch_size {batch_size} of {size} images keeps about {_bytes(needed)} "
                        f"of activations a step, and this {where} has {_bytes(free)} free: lower "
                        f"train.batch_size or data.image_size")


def _bytes(size: int) -> str:
    return f"{size / (1 << 30):,.1f} GiB" if size >= 1 << 30 else f"{size / (1 << 20):,.1f} MiB"


def _fits_on_device(num_bytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    return num_bytes < DEVICE_MEMORY_SHARE * free


class DeviceData:
    """Training and validation images as uint8 tensors, on the device when they fit
    (else in pinned host memory, or read from the memory-mapped files when `data`
    holds np.memmap arrays, batches streamed over); labels always on the device."""

    def __init__(self, data: dict, device: torch.device):
        meta = data["meta"]
        self.device = device
        num_bytes = data["train_images"].nbytes + data["val_images"].nbytes
        self.resident = _fits_on_device(num_bytes, device)
        storage = device if self.resident else torch.device("cpu")
        self.train_images = self._images(data["train_images"], storage)
        self.val_images = self._images(data["val_images"], storage)
        self.train_labels = torch.as_tensor(np.asarray(data["train_labels"]), dtype=torch.int64).to(device)
        self.val_labels = torch.as_tensor(np.asarray(data["val_labels"]), dtype=torch.int64).to(device)
        self.normalize = Normalize(meta["mean"], meta["std"], device)
        self.classes = list(meta["classes"])

    def _images(self, array, storage: torch.device) -> torch.Tensor:
        if isinstance(array, np.memmap) and storage.type == "cpu":
            # Prepared data opened as a memory map (mmap_mode="c") stays on disk: each
            # batch reads its pages, so data larger than RAM still trains.
            return torch.from_numpy(array)
        images = torch.from_numpy(np.ascontiguousarray(array))
        if storage.type == "cpu" and self.device.type == "cuda":
            return images.pin_memory()
        return images.to(storage)

    def first_train_images(self, count: int) -> torch.Tensor:
        """Up to `count` training images, normalized (what model.init_from_data sees)."""
        count = min(count, len(self.train_labels))
        return self.batch(self.train_images, torch.arange(count, device=self.device))

    def batch(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The images at `indices`, on the device, as normalized float32."""
        if not self.resident:
            indices = indices.cpu()
        return self.normalize(images[indices].to(self.device, non_blocking=True))
