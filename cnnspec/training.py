"""The training loop: one readable function in the style of airbench / nanoGPT.

    result = train(model, load_prepared("data/prepared"), params["train"], device,
                   resume_path="models/resume/state.pt", log_dir="metrics/train")

What makes it fast on a GPU (issue 4):
- the dataset goes to the device once, as uint8; each batch is gathered, normalized
  and augmented there (a host-memory fallback streams batches when it does not fit);
- shuffling is torch.randperm on the device; every random draw comes from one seeded
  generator, so CPU runs repeat exactly;
- channels_last, bf16 autocast (fp16 with a grad scaler as an option), cudnn.benchmark,
  optional torch.compile (the first step is timed apart: it holds the compile);
- losses, correct counts and the divergence check stay on the device and are read once
  per epoch: the loop never waits for the GPU inside an epoch (except the progress bar
  of an interactive run, a few times an epoch).

What makes it safe (issue 5):
- after every epoch a resume state (weights, optimizer, schedule, early stopping,
  lookahead/EMA, RNG states, history) is written atomically to `resume_path`, stamped
  with a fingerprint of the params, spec and data; a re-run with the same fingerprint
  continues from it and ends with exactly the numbers an uninterrupted run gives;
- Ctrl-C saves the state of the epoch in progress and stops with one line;
- a nan/inf loss stops with one line naming the epoch and step; the last good state stays;
- CUDA out-of-memory becomes one line with the batch size.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnspec import recipe
from cnnspec.atomic import save_torch
from cnnspec.augment import Augmentation
from cnnspec.errors import ParamsError, TrainingError
from cnnspec.integrity import set_aside

RESUME_FORMAT = "cnnspec-resume/2"  # 2: per-step losses in a mid-epoch state
WHITENING_IMAGES = 5000  # training images handed to model.init_from_data (airbench's figure)
DEVICE_MEMORY_SHARE = 0.5  # the dataset may take this share of free GPU memory


class TrainingInterrupted(TrainingError):
    """Ctrl-C: the progress is saved; exit status 130 like any interrupted command."""

    exit_code = 130


@dataclass
class TrainResult:
    model: torch.nn.Module  # the weights to save: EMA / best epoch applied
    history: list[dict]  # per epoch: train/loss, train/accuracy, val/loss, val/accuracy, lr
    best_epoch: int  # 0-based epoch whose weights `model` holds
    stopped_early: bool = False
    first_step_seconds: float = 0.0  # includes torch.compile when it is on
    train_seconds: float = 0.0  # every other step and the validations of this process
    resumed_from_epoch: int = 0
    extras: dict = field(default_factory=dict)


# ---------------------------------------------------------------- device and data

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("params.yaml: train.device: cuda is not available on this machine; "
                            "use auto or cpu")
    return torch.device(name)


def _fits_on_device(num_bytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    return num_bytes < DEVICE_MEMORY_SHARE * free


class DeviceData:
    """Training and validation images as uint8 tensors, on the device when they fit
    (else in pinned host memory, batches streamed over); labels always on the device."""

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
        mean = torch.tensor(meta["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(meta["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        # (pixels / 255 - mean) / std as one multiply-add: pixels * scale + shift
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std
        self.classes = list(meta["classes"])

    def _images(self, array, storage: torch.device) -> torch.Tensor:
        images = torch.from_numpy(np.ascontiguousarray(array))
        if storage.type == "cpu" and self.device.type == "cuda":
            return images.pin_memory()
        return images.to(storage)

    def batch(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The images at `indices`, on the device, as normalized float32."""
        if not self.resident:
            indices = indices.cpu()
        pixels = images[indices].to(self.device, non_blocking=True)
        return torch.addcmul(self.shift, pixels.float(), self.scale)


# ---------------------------------------------------------------- precision and torch settings

def autocast_dtype(device: torch.device, precision: str, cuda_paths_on_cpu: bool):
    """bf16/fp16 autocast on CUDA; on CPU only when asked (tests exercise the CUDA paths)."""
    if precision == "off" or (device.type != "cuda" and not cuda_paths_on_cpu):
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _autocast(device: torch.device, dtype):
    return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16,
                          enabled=dtype is not None)


@contextlib.contextmanager
def torch_settings(device: torch.device, deterministic: bool):
    """cudnn.benchmark for speed, or PyTorch's deterministic algorithms when asked;
    restored afterwards so a test process is left as it was."""
    before = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before[0]
        torch.use_deterministic_algorithms(before[1])


# ---------------------------------------------------------------- resume state

def run_fingerprint(params: dict, spec_text: str, meta: dict) -> str:
    """What a resume state must match to be continued: params, spec and data."""
    text = json.dumps({"params": params, "spec": spec_text, "meta": meta}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_resume_state(path, fingerprint: str) -> dict | None:
    """The saved state when it belongs to this run, else None (with a note why)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a torn or foreign file: set it aside and start over
        aside = set_aside(path)
        print(f"note: resume state {path} is damaged ({type(error).__name__}); moved it to {aside} "
              "and training starts over from epoch 1", file=sys.stderr)
        return None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        print(f"note: ignoring {path}: not a cnnspec resume state", file=sys.stderr)
        return None
    if state.get("fingerprint") != fingerprint:
        print(f"note: ignoring {path}: it was saved for other params, spec or data", file=sys.stderr)
        return None
    return state


class _InterruptFlag:
    """Turns the first Ctrl-C into a flag the loop checks between steps; a second one
    interrupts at once."""

    def __init__(self):
        self.raised = False

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


# ---------------------------------------------------------------- logging

class EpochLog:
    """DVCLive under `log_dir` (train/loss, train/accuracy, val/loss, val/accuracy, lr
    per epoch) and one printed line per epoch. A resumed run keeps the step numbering;
    epochs saved but not yet logged when the last run died are logged from the history."""

    KEYS = ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr")

    def __init__(self, log_dir, history: list[dict], start_epoch: int, epochs: int):
        self.live, self.epochs = None, epochs
        if log_dir is None:
            return
        from dvclive import Live

        logged = _logged_epochs(Path(log_dir)) if start_epoch > 0 else 0
        self.live = Live(str(log_dir), dvcyaml=False, save_dvc_exp=False, report=None,
                         resume=start_epoch > 0)
        self.live.step = min(logged, start_epoch)
        for record in history[self.live.step:start_epoch]:
            self._log(record)

    def _log(self, record: dict) -> None:
        for key in self.KEYS:
            if key in record:  # no val/* without a validation split
                self.live.log_metric(key, float(record[key]))
        self.live.next_step()

    def epoch(self, epoch: int, record: dict, seconds: float) -> None:
        if self.live is not None:
            self._log(record)
        val = (f"  val loss {record['val/loss']:.4f} acc {record['val/accuracy']:.4f}"
               if "val/loss" in record else "")
        line = (f"epoch {epoch + 1}/{self.epochs}  train loss {record['train/loss']:.4f} "
                f"acc {record['train/accuracy']:.4f}{val}  lr {record['lr']:.3g}  {seconds:.1f}s")
        _print_line(line)

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


def _logged_epochs(log_dir: Path) -> int:
    try:
        return int(json.loads((log_dir / "metrics.json").read_text())["step"]) + 1
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _interactive() -> bool:
    return sys.stderr.isatty()


def _print_line(line: str) -> None:
    if _interactive():
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        print(line, flush=True)


def _progress_bar(epoch: int, epochs: int, steps: int, start: int):
    if not _interactive():
        return None
    from tqdm import tqdm

    return tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------- the run

class _Run:
    """Everything that changes during training, so that it can be saved and restored
    as one resume state."""

    def __init__(self, model, data: DeviceData, params: dict, device: torch.device,
                 cuda_paths_on_cpu: bool):
        self.params, self.device, self.data = params, device, data
        self.model = model
        num_train = len(data.train_labels)
        self.batch_size = min(params["batch_size"], num_train)
        # Full batches only (the remainder is reshuffled into later epochs): one shape
        # for cudnn.benchmark and torch.compile, and never a batch of one for batch norm.
        self.steps_per_epoch = num_train // self.batch_size
        self.epochs = params["epochs"]
        self.generator = torch.Generator(device=device).manual_seed(params["seed"])
        self.augment = Augmentation.from_params(params["augment"], num_train, params["seed"] + 1, device)
        self.autocast_dtype = autocast_dtype(device, params["precision"], cuda_paths_on_cpu)
        self.channels_last = params["channels_last"] and (device.type == "cuda" or cuda_paths_on_cpu)
        weight = recipe.class_weights(data.train_labels, data.classes, params["class_weights"])
        self.criterion = recipe.make_loss(params["loss"], None if weight is None else weight.to(device))
        self.optimizer = recipe.make_optimizer(model, params["optimizer"])
        self.schedule = recipe.make_schedule(self.optimizer, params["scheduler"], self.epochs,
                                             self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype is torch.float16)
        options = params["early_stopping"]
        self.early_stopping = recipe.EarlyStopping(options) if options["enabled"] else None
        options = params["lookahead"]
        self.lookahead = recipe.Lookahead(model, options["steps"], options["alpha"], options["schedule"],
                                          self.epochs * self.steps_per_epoch) if options["enabled"] else None
        options = params["ema"]
        self.ema = recipe.EMA(model, options["decay"]) if options["enabled"] else None
        self.step_model = torch.compile(model) if params["compile"] else model
        self.history: list[dict] = []
        self.next_epoch, self.progress, self.stopped_early = 0, None, False

    @property
    def evaluated_model(self):
        """The weights that are validated and saved: the EMA's when it is on."""
        return self.ema.model if self.ema else self.model

    def state_dict(self, next_epoch: int, progress: dict | None = None) -> dict:
        parts = {"early_stopping": self.early_stopping, "lookahead": self.lookahead, "ema": self.ema}
        return {
            "format": RESUME_FORMAT,
            "next_epoch": next_epoch,
            "stopped_early": self.stopped_early,
            "progress": progress,
            "history": self.history,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            **{name: part.state_dict() for name, part in parts.items() if part is not None},
            "rng": {"torch": torch.get_rng_state(), "data": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        for name in ("early_stopping", "lookahead", "ema"):
            part = getattr(self, name)
            if part is not None:
                part.load_state_dict(state[name])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["data"])
        if self.device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.history, self.next_epoch = list(state["history"]), state["next_epoch"]
        self.progress, self.stopped_early = state["progress"], state["stopped_early"]


def _first_images(data: DeviceData) -> torch.Tensor:
    count = min(WHITENING_IMAGES, len(data.train_labels))
    return data.batch(data.train_images, torch.arange(count, device=data.device))


def _to_layout(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def _train_steps(run: _Run, epoch: int, epoch_lr: float, progress: dict | None,
                 interrupt: _InterruptFlag, resume_path, timing: dict) -> dict:
    """One epoch of optimizer steps (from `progress` when resuming mid-epoch). Returns
    the device-side record of the epoch: every step's loss and the correct count (five
    small kernels a step; the sum and the divergence check wait for the epoch's end).
    `epoch_lr` is only kept with an interrupted state."""
    data, model = run.data, run.step_model
    if progress is None:
        order = torch.randperm(len(data.train_labels), device=run.device, generator=run.generator)
        sums = {"losses": torch.zeros(run.steps_per_epoch, dtype=torch.float32, device=run.device),
                "correct": torch.zeros((), dtype=torch.int64, device=run.device)}
        start = 0
    else:
        order, sums, start = progress["order"].to(run.device), progress["sums"], progress["step"]
        sums = {key: value.to(run.device) for key, value in sums.items()}
    run.model.train()
    bar = _progress_bar(epoch, run.epochs, run.steps_per_epoch, start)
    for step in range(start, run.steps_per_epoch):
        first = not timing["first_step_done"]
        if first:
            started = time.perf_counter()
        indices = order[step * run.batch_size:(step + 1) * run.batch_size]
        images = run.augment(data.batch(data.train_images, indices), indices, epoch, run.generator)
        labels = data.train_labels[indices]
        with _autocast(run.device, run.autocast_dtype):
            logits = model(_to_layout(images, run.channels_last))
            loss = run.criterion(logits, labels)
            if run.model.l2_terms:
                loss = loss + run.model.regularization_loss()
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.model.drop_frozen_gradients()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.schedule.after_step()
        if run.lookahead:
            run.lookahead.after_step()
        if run.ema:
            run.ema.after_step()
        sums["losses"][step] = loss.detach()
        sums["correct"] += (logits.detach().argmax(1) == labels).sum()
        if first:
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)
            timing["first_step_seconds"] = time.perf_counter() - started
            timing["first_step_done"] = True
        if bar is not None:
            bar.update(1)
            if step % max(1, run.steps_per_epoch // 10) == 0:  # a few syncs, interactive only
                bar.set_postfix(loss=f"{sums['losses'][:step + 1].mean().item():.4f}",
                                acc=f"{sums['correct'].item() / ((step + 1) * run.batch_size):.4f}")
        if interrupt.raised:
            _save_interrupted(run, epoch, epoch_lr, step, order, sums, resume_path, bar)
    if bar is not None:
        bar.close()
    return sums


def _save_interrupted(run, epoch, epoch_lr, step, order, sums, resume_path, bar):
    if bar is not None:
        bar.close()
    where = f"epoch {epoch + 1}, step {step + 1}"
    if resume_path is None:
        raise TrainingInterrupted(f"training interrupted at {where}; nothing saved (no resume path)")
    progress = {"step": step + 1, "order": order.cpu(), "lr": epoch_lr,
                "sums": {key: value.cpu() for key, value in sums.items()}}
    save_torch(resume_path, run.state_dict(epoch, progress) | {"fingerprint": run.fingerprint})
    raise TrainingInterrupted(f"training interrupted at {where}; progress saved to {resume_path}, "
                              "run the train stage again to continue")


@torch.inference_mode()
def _validate(run: _Run) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation loss sum and correct count, in large batches, left on the device."""
    model, data = run.evaluated_model, run.data
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    correct = torch.zeros((), dtype=torch.int64, device=run.device)
    indices = torch.arange(len(data.val_labels), device=run.device)
    for chunk in indices.split(max(4 * run.batch_size, 1024)):
        images = _to_layout(data.batch(data.val_images, chunk), run.channels_last)
        labels = data.val_labels[chunk]
        with _autocast(run.device, run.autocast_dtype):
            logits = model(images)
        loss_sum += run.criterion(logits, labels).double() * len(chunk)
        correct += (logits.argmax(1) == labels).sum()
    model.train()
    return loss_sum, correct


def _check_validation_needs(params: dict, num_val: int) -> None:
    """Early stopping and the plateau schedule watch the validation split."""
    if num_val:
        return
    needs = []
    if params["early_stopping"]["enabled"]:
        needs.append("train.early_stopping.enabled: true")
    if params["scheduler"]["name"] == "plateau":
        needs.append("train.scheduler.name: plateau")
    if needs:
        raise ParamsError(f"params.yaml: {' and '.join(needs)} needs a validation split, but the "
                          "prepared data has none (data.val_split: 0); set data.val_split above 0")


def _nominal_lr(optimizer) -> float:
    """The schedule's lr now, without the first group's lr_mult."""
    group = optimizer.param_groups[0]
    return float(group["lr"] / group.get("lr_mult", 1.0))


def _divergence_error(epoch: int, step: int) -> TrainingError:
    return TrainingError(
        f"the training loss became nan or inf at epoch {epoch + 1}, step {step + 1}; "
        "lower train.optimizer.lr, set train.precision: off, or add l2 / batch norm to the spec "
        "(the last good resume state is kept)")


def _oom_error(batch_size: int, epoch: int) -> TrainingError:
    return TrainingError(
        f"CUDA out of memory at epoch {epoch + 1} with train.batch_size {batch_size}; "
        f"try train.batch_size {max(1, batch_size // 2)}, or train.precision: bf16")


def train(model, data: dict, params: dict, device="cpu", *, resume_path=None, log_dir=None,
          fingerprint: str = "", cuda_paths_on_cpu: bool = False) -> TrainResult:
    """Train `model` (a SpecModel) on prepared `data` (load_prepared's dict) with the
    `train` section of params.yaml. `resume_path`: where the per-epoch resume state
    lives (None: no resume); `log_dir`: the DVCLive folder (None: print only).
    `cuda_paths_on_cpu` runs the CUDA-only paths (autocast, channels_last) on CPU."""
    device = torch.device(device)
    with torch_settings(device, params["deterministic"]), _InterruptFlag() as interrupt:
        return _train(model, data, params, device, resume_path, log_dir, fingerprint,
                      cuda_paths_on_cpu, interrupt)


def _train(model, data, params, device, resume_path, log_dir, fingerprint, cuda_paths_on_cpu,
           interrupt) -> TrainResult:
    _check_validation_needs(params, len(data["val_labels"]))
    torch.manual_seed(params["seed"])
    device_data = DeviceData(data, device)
    model = model.to(device)
    saved = read_resume_state(resume_path, fingerprint) if resume_path else None
    if saved is None:
        with torch.no_grad():
            model.init_from_data(_first_images(device_data))
    if params["channels_last"] and (device.type == "cuda" or cuda_paths_on_cpu):
        model = model.to(memory_format=torch.channels_last)
    run = _Run(model, device_data, params, device, cuda_paths_on_cpu)
    run.fingerprint = fingerprint
    if saved is not None:
        run.load_state_dict(saved)
        print(f"resuming from {resume_path} at epoch {run.next_epoch + 1}", file=sys.stderr)
    start_epoch = run.next_epoch
    num_val = len(device_data.val_labels)
    log = EpochLog(log_dir, run.history, start_epoch, run.epochs)
    timing = {"first_step_done": False, "first_step_seconds": 0.0}
    stopped_early = run.stopped_early
    started = time.perf_counter()
    try:
        for epoch in range(start_epoch, run.epochs):
            if stopped_early:
                break
            epoch_started = time.perf_counter()
            progress, run.progress = run.progress, None
            epoch_lr = progress["lr"] if progress else _nominal_lr(run.optimizer)
            run.model.start_epoch(epoch)
            try:
                sums = _train_steps(run, epoch, epoch_lr, progress, interrupt, resume_path, timing)
                if run.lookahead and epoch == run.epochs - 1:
                    run.lookahead.finish()
                if num_val:
                    val_loss, val_correct = _validate(run)
                else:  # data.val_split: 0, training on every image (airbench's protocol)
                    val_loss = val_correct = torch.zeros((), dtype=torch.float64, device=run.device)
            except torch.OutOfMemoryError:
                raise _oom_error(run.batch_size, epoch) from None
            # The one read of the epoch: everything the device accumulated.
            losses = sums["losses"]
            bad = ~torch.isfinite(losses)
            first_bad = torch.where(bad.any(), bad.int().argmax(), -1)
            mean_loss, correct, bad_step, val_loss, val_correct = (
                torch.stack([losses.double().mean(), sums["correct"].double(), first_bad.double(),
                             val_loss, val_correct.double()]).tolist())
            if bad_step >= 0 or not math.isfinite(val_loss):
                raise _divergence_error(epoch, int(bad_step) if bad_step >= 0 else run.steps_per_epoch - 1)
            seen = run.steps_per_epoch * run.batch_size
            record = {"train/loss": mean_loss, "train/accuracy": correct / seen}
            if num_val:
                record |= {"val/loss": val_loss / num_val, "val/accuracy": val_correct / num_val}
            record["lr"] = epoch_lr
            run.history.append(record)
            run.schedule.after_epoch(record.get("val/loss"))
            if run.early_stopping:
                metrics = {"val_loss": record["val/loss"], "val_accuracy": record["val/accuracy"]}
                stopped_early = run.early_stopping.update(epoch, metrics, run.evaluated_model)
            run.stopped_early = stopped_early
            if resume_path is not None:
                save_torch(resume_path, run.state_dict(epoch + 1) | {"fingerprint": fingerprint})
            log.epoch(epoch, record, time.perf_counter() - epoch_started)
    finally:
        log.close()
    return _finish(run, stopped_early, timing, time.perf_counter() - started, start_epoch)


def _finish(run: _Run, stopped_early: bool, timing: dict, seconds: float, start_epoch: int) -> TrainResult:
    model = run.model
    if run.ema:
        model.load_state_dict(run.ema.model.state_dict())
    best_epoch = len(run.history) - 1
    if run.early_stopping and run.early_stopping.restore_best and run.early_stopping.best_state:
        run.early_stopping.restore(model)
        best_epoch = run.early_stopping.best_epoch
    model.eval()
    first = timing["first_step_seconds"]
    return TrainResult(model=model, history=run.history, best_epoch=best_epoch,
                       stopped_early=stopped_early, first_step_seconds=first,
                       train_seconds=seconds - first, resumed_from_epoch=start_epoch)
