"""An exported ONNX model run by onnxruntime (`cnnspec predict model.onnx`, and the
engine `cnnspec predict` picks for many images): the graph read once and checked
(metadata.read_onnx), each batch's run bounded in time, a file's runs in memory too,
onnxruntime's errors one line.
"""
from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING

import numpy as np
import torch

from cnnspec.errors import first_line
from cnnspec.inference.metadata import ExportError

if TYPE_CHECKING:
    from cnnspec.inference.predict import InferenceModel


class OnnxModel:
    """An exported ONNX model (`cnnspec export --format onnx`) run by onnxruntime, with the
    class names and image settings from its metadata: `cnnspec predict model.onnx ...`
    reads and resizes images exactly as for the checkpoint it came from.
    `OnnxModel.from_model(model)` runs a loaded InferenceModel the same way, exported in
    memory. The session has as many intra-op threads as torch uses."""

    def __init__(self, path):
        from cnnspec.inference.metadata import onnx_settings, read_onnx

        data, graph = read_onnx(path)
        settings = onnx_settings(path, graph)
        try:
            # the bytes checked, not the path: nothing else is read; its memory capped: a file
            # from someone else may ask for any size (a Pad of a billion values)
            self.session = _session(data, capped=True)
        except OnnxUnavailable as error:
            if error.installed:
                raise
            raise ExportError("running an ONNX model needs onnxruntime: pip install 'cnnspec[export]'") from None
        except Exception as error:  # noqa: BLE001 - onnxruntime's own error types for a bad graph
            first = first_line(error)
            raise ExportError(f"{path}: onnxruntime cannot run this model ({first[:160]})") from None
        self.name = str(path)
        self.classes, self.channels = settings["classes"], settings["channels"]
        self.image_size, self.resize = tuple(settings["image_size"]), settings["resize"]
        self._check_graph(path)

    def _check_graph(self, path) -> None:
        """The graph's one input and one output are cnnspec's `images` and `probabilities`
        (their sizes were checked against the metadata as the file was read)."""
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != (["images"], ["probabilities"]):
            raise ExportError(f"{path}: not a graph cnnspec export wrote (inputs {names[0]}, outputs "
                              f"{names[1]}; expected images and probabilities)")

    @classmethod
    def from_model(cls, model: InferenceModel) -> OnnxModel:
        """`model` exported to ONNX in memory by `cnnspec export`'s writer (nothing is
        written to disk) and run by onnxruntime, checked against PyTorch on a few seeded
        random images first. Raises OnnxUnavailable when onnxruntime is not installed or
        does not load, ExportError when the export fails or does not match."""
        from cnnspec.inference.onnx_graph import TOLERANCE, onnx_bytes

        _import_onnxruntime()  # before the export: without onnxruntime it is wasted
        generator = torch.Generator().manual_seed(0)
        shape = (model.channels, *model.image_size)
        images = torch.randint(0, 256, (3, *shape), generator=generator, dtype=torch.uint8).float() / 255
        try:
            data = onnx_bytes(model, images[:2], with_metadata=False)
        except Exception as error:  # noqa: BLE001 - an exporter error of any kind: torch stays
            first = first_line(error)
            raise ExportError(f"the in-memory ONNX export failed: {first}") from None
        self = cls.__new__(cls)
        self.session, self.name = _session(data), "the in-memory ONNX export"
        self.classes, self.channels = list(model.classes), model.channels
        self.image_size, self.resize = tuple(model.image_size), model.resize
        with torch.inference_mode():
            expected = model(images)
        difference = float((self.probabilities(images) - expected).abs().max())
        if not difference <= TOLERANCE:
            raise ExportError(f"the in-memory ONNX export differs from PyTorch by {difference:.2e} "
                              f"(> {TOLERANCE:g})")
        return self

    def probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, classes) probabilities of a (N, C, H, W) batch. onnxruntime's errors, a run
        past run_seconds_limit and an output of another shape are one-line ExportErrors."""
        batch = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels.float()
        output = self._run_bounded(batch.numpy())
        expected = (len(batch), len(self.classes))
        if not (isinstance(output, np.ndarray) and output.shape == expected and output.dtype == np.float32):
            shown = list(output.shape) if isinstance(output, np.ndarray) else type(output).__name__
            raise ExportError(f"{self.name}: the graph returned probabilities of shape {shown} for "
                              f"{len(batch)} images, not {list(expected)}; not a graph cnnspec export wrote")
        return torch.from_numpy(output)

    def _run_bounded(self, batch: np.ndarray):
        """The session's output for `batch`, run in a thread that is told to stop after
        run_seconds_limit or on Ctrl-C: while onnxruntime runs, Python cannot be interrupted."""
        options = _import_onnxruntime().RunOptions()
        options.log_severity_level = QUIET
        outcome = {}

        def run():
            try:
                outcome["output"] = self.session.run(["probabilities"], {"images": batch}, options)[0]
            except Exception as error:  # noqa: BLE001 - onnxruntime's own error types
                outcome["error"] = error

        worker = threading.Thread(target=run, daemon=True)  # daemon: a run that ignores terminate
        worker.start()
        limit = run_seconds_limit(batch)
        try:
            worker.join(limit)
        finally:  # also on Ctrl-C
            if worker.is_alive():
                options.terminate = True
        if worker.is_alive():
            worker.join(STOP_SECONDS)  # let onnxruntime see terminate: the next engine needs the cores
            raise ExportError(f"{self.name}: onnxruntime ran for more than {limit:.0f} s on {len(batch)} images "
                              f"and was stopped; the graph is no export of a cnnspec spec, or far too slow here")
        if "error" in outcome:
            said = first_line(outcome["error"]).removeprefix("[ONNXRuntimeError] : ")
            asked = ARENA_REFUSAL.search(said)
            if asked:
                raise ExportError(f"{self.name}: the graph asked for {int(asked[1]):,} bytes at once on "
                                  f"{len(batch)} images, more than the {ARENA_MIB:,} MiB cnnspec lets an ONNX "
                                  f"file's runs hold (half the memory free when the first was loaded); "
                                  f"a smaller --batch-size helps a real model")
            raise ExportError(f"{self.name}: onnxruntime failed on {len(batch)} images ({said[:200]})")
        return outcome["output"]


# A bound on one batch's run, far above what the shipped specs need on a slow CPU
# (vgg16 takes about 1 s an image of 3x224x224, 150,000 input values).
RUN_SECONDS_FLOOR = 60
STOP_SECONDS = 5  # a run told to terminate stops between two of its nodes
RUN_SECONDS_PER_MILLION_INPUT_VALUES = 200


def run_seconds_limit(batch: np.ndarray) -> float:
    return RUN_SECONDS_FLOOR + RUN_SECONDS_PER_MILLION_INPUT_VALUES * batch.size / 1e6


def _import_onnxruntime():
    """onnxruntime, or OnnxUnavailable saying it is not installed (`installed` False) or
    installed but failing to load (`installed` True: a broken install)."""
    try:
        import onnxruntime
    except ModuleNotFoundError as error:
        if error.name != "onnxruntime":
            raise OnnxUnavailable(f"onnxruntime does not load: {error}", installed=True) from None
        raise OnnxUnavailable("onnxruntime is not installed: pip install 'cnnspec[export]'",
                              installed=False) from None
    except Exception as error:  # noqa: BLE001 - a missing library, a bad build: any of them
        first = first_line(error)
        raise OnnxUnavailable(f"onnxruntime does not load: {first}", installed=True) from None
    return onnxruntime


QUIET = 4  # onnxruntime logs only fatal errors: its warnings print coloured lines of their own


def _session(model, capped: bool = False):
    """An onnxruntime CPU session of `model` (a path or the bytes of an ONNX model) with
    torch's intra-op thread count, so both engines use the same cores. `capped` (a file
    from someone else): it takes its memory from the process's capped arena (capped_arena);
    cnnspec's own export of a loaded model keeps an arena of its own, freed with it."""
    onnxruntime = _import_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    options.log_severity_level = QUIET
    if capped and capped_arena(onnxruntime):
        options.add_session_config_entry("session.use_env_allocators", "1")
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


# The memory an ONNX file's runs may hold at once: one arena for the process, registered
# with onnxruntime when the first file is loaded, at this share of the memory then free.
# A graph asking more (a Pad or Resize to a billion values; the graphs that size tensors
# from values are refused before: metadata.refused_operator) fails in one line instead of
# waking the kernel's OOM killer. The arena keeps what its largest run held until the
# process ends (a notebook's too): handing it back after every run (onnxruntime's arena
# shrinkage) cost 10-35% of predict's speed on fashion_cpu.
ARENA_SHARE = 0.5
ARENA_FALLBACK_BYTES = 4 << 30  # where the memory free is not known
ARENA_MIB = 0                   # the cap, once registered (for messages)
ARENA_REFUSAL = re.compile(r"Available memory of \d+ is smaller than requested bytes of (\d+)")
_arena_registered: bool | None = None


def arena_bytes() -> int:
    from cnnspec.training.device import available_memory

    free = available_memory(torch.device("cpu"))
    return int(free * ARENA_SHARE) if free else ARENA_FALLBACK_BYTES


def capped_arena(onnxruntime) -> bool:
    """Registers the capped arena once; False where onnxruntime refuses it (one is
    registered already, by the caller's own code: then the sessions use no shared one)."""
    global _arena_registered, ARENA_MIB
    if _arena_registered is None:
        cap = arena_bytes()
        memory = onnxruntime.OrtMemoryInfo("Cpu", onnxruntime.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                           onnxruntime.OrtMemType.DEFAULT)
        try:  # 1: each chunk as large as asked, so the cap is the bytes held
            onnxruntime.create_and_register_allocator(memory, onnxruntime.OrtArenaCfg(cap, 1, -1, -1))
            _arena_registered, ARENA_MIB = True, cap >> 20
        except Exception:  # noqa: BLE001 - onnxruntime's error: an allocator is registered already
            _arena_registered = False
    return _arena_registered


class OnnxUnavailable(ExportError):
    """onnxruntime is not installed, or is installed and does not load (`installed`)."""

    def __init__(self, message: str, installed: bool):
        super().__init__(message)
        self.installed = installed
