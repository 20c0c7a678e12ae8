"""The training loop, read top to bottom: `train`, then the `Run` it drives (everything
that changes during training, and the step), then the resume state (in the style of
airbench / nanoGPT).

    result = train(model, load_prepared(PREPARED), params["train"], device,
                   resume_path=RESUME_STATE, log_dir=TRAIN_LOG)

Beside it: device.py (the device, precision, torch settings, the data on the device),
progress.py (the lines a run prints, its clocks and DVCLive), stops.py (Ctrl-C, SIGTERM,
nan and out-of-memory, each ending in one line), distributed.py (the World: one
process, or this one's place among several), optimization.py, augment.py.

What makes it fast on a GPU:
- the dataset goes to the device once, as uint8; each batch is gathered, normalized
  and augmented there (a host-memory fallback streams batches when it does not fit);
- shuffling is torch.randperm on the device; every random draw comes from one seeded
  generator, so CPU runs repeat exactly;
- channels_last, bf16 autocast (fp16 with a grad scaler as an option), cudnn.benchmark,
  optional torch.compile (the first step is timed apart: it holds the compile);
- losses, correct counts and the divergence check stay on the device and are read once
  per epoch (`read_epoch_totals`): the loop never waits for the GPU inside an epoch
  (except the progress bar of an interactive run, a few times an epoch).

And on a CPU: channels_last too (oneDNN's convolutions), bf16 autocast where the CPU
has bf16 instructions, and freed memory kept for the next step (`reuse_freed_memory`):
glibc would otherwise hand each step's activations back to the system and fault them in
again, a fifth of a small network's step.

What makes it safe:
- after every epoch a resume state (weights, optimizer, schedule, early stopping,
  lookahead/EMA, RNG states, history) is written atomically to `resume_path`, stamped
  with a fingerprint of the params, spec and data; a re-run with the same fingerprint
  continues from it and ends with exactly the numbers an uninterrupted run gives;
- Ctrl-C or SIGTERM ends the step in progress, saves the state of the epoch so far and
  stops with one line;
- a nan/inf loss stops with one line naming the epoch and step; the last good state stays;
- CUDA out-of-memory becomes one line with the batch size.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from cnnspec.atomic import save_torch
from cnnspec.data.datasets import USER_DATASETS
from cnnspec.data.download import md5_of
from cnnspec.data.integrity import set_aside
from cnnspec.errors import TrainingError, first_line
from cnnspec.models.checkpoint import non_finite_tensor
from cnnspec.torch_files import UnsafeTorchFile, load_torch_file
from cnnspec.training import distributed, optimization, stops
from cnnspec.training.augment import Augmentation
from cnnspec.training.device import (
    DeviceData,
    autocast,
    autocast_dtype,
    check_step_memory,
    inference_batch,
    reuse_freed_memory,
    to_layout,
    torch_settings,
)
from cnnspec.training.distributed import ONE_PROCESS, World
from cnnspec.training.finetune import UnfreezeSchedule
from cnnspec.training.progress import Clock, CostClock, EpochLog, EpochProgressBar, cpu_sized_run, print_line

RESUME_FORMAT = "cnnspec-resume/3"  # 3: a mid-epoch state keeps its per-step losses as `losses`
WHITENING_IMAGES = 5000  # training images handed to model.init_from_data (airbench's figure)


@dataclass
class TrainResult:
    model: torch.nn.Module  # the weights to save: EMA / best epoch applied
    history: list[dict]  # per epoch: train/loss, train/accuracy, val/loss, val/accuracy, lr
    best_epoch: int  # 0-based epoch whose weights `model` holds
    stopped_early: bool = False
    first_step_seconds: float = 0.0  # includes torch.compile when it is on
    train_seconds: float = 0.0  # every other step and the validations of this process
    resumed_from_epoch: int = 0


# ---------------------------------------------------------------- the loop

def train(model, data: dict, params: dict, device="cpu", *, resume_path=None, log_dir=None,
          fingerprint: str = "", world: World = ONE_PROCESS) -> TrainResult:
    """Train `model` (a SpecModel) on prepared `data` (load_prepared's dict) with the
    `train` section of params.yaml. `resume_path`: where the per-epoch resume state
    lives (None: no resume); `log_dir`: the DVCLive folder (None: print only);
    `fingerprint`: run_fingerprint of what a resume state must match; `world`: the
    processes of a data-parallel run and this one's place (cnnspec/training/distributed.py),
    one process by default. Only its writer (rank 0) writes; with several processes a
    stop signal is torchrun's to handle: it stops every rank, and the last finished
    epoch is the state kept."""
    device = torch.device(device)
    optimization.check_validation_needs(params, len(data["val_labels"]))
    if hasattr(model, "activation_bytes"):  # a SpecModel: its batch's activations must fit
        half = autocast_dtype(device, params["precision"], params["cpu_precision"]) is not None
        check_step_memory(model.activation_bytes // (2 if half else 1), max(1, params["batch_size"] // world.size),
                          model.input_shape, device)  # each process holds its share of the batch
    if device.type == "cpu":
        reuse_freed_memory()  # each step's activations take the memory the last step freed
    resume_path, log_dir = (resume_path, log_dir) if world.is_writer else (None, None)
    with torch_settings(device, params["deterministic"]), stops.StopSignals(world.handles_signals) as stop_signal:
        # setup: the data on the device, then the saved state (rank 0's) or a fresh start
        torch.manual_seed(params["seed"])
        try:
            device_data = DeviceData(data, device)
            saved = distributed.from_rank_0(
                world, lambda: read_resume_state(resume_path, fingerprint) if resume_path else None)
            run = Run(model, device_data, params, device, init_from_data=saved is None, world=world)
            if saved is not None:
                load_resume_state(run, saved, resume_path)
        except torch.OutOfMemoryError:
            raise stops.setup_oom_error(model) from None
        if saved is not None:
            print(f"resuming from {resume_path} at epoch {run.next_epoch + 1}", file=sys.stderr)
        start_epoch = run.next_epoch
        with EpochLog(log_dir, run.history, start_epoch, run.epochs) as log:
            clock = Clock(device)
            if world.is_writer:  # the device, the steps, then the time estimate
                if device.type == "cpu" and params["cpu_precision"] == "bf16" and run.autocast_dtype is None:
                    print_line("note: train.cpu_precision is bf16, but this CPU has no bf16 instructions "
                               "(AMX or AVX512): training in fp32, which is faster here")
                own_images = data["meta"].get("dataset") in USER_DATASETS
                clock.cost = CostClock(print_line, device, run.epochs, start_epoch, run.steps_per_epoch,
                                       run.batch_size, len(device_data.train_labels), run.early_stopping is not None,
                                       precision=run.autocast_dtype,
                                       advice=cpu_sized_run(own_images, data["meta"].get("input_shape"),
                                                            getattr(model, "spec_name", None)))
            for epoch in range(start_epoch, run.epochs):
                if run.stopped_early:
                    break
                epoch_started = time.perf_counter()
                # the steps, and the validation of the weights they leave
                progress = run.start_epoch(epoch)
                try:
                    _train_steps(run, epoch, progress, stop_signal, clock)
                    if run.lookahead and epoch == run.epochs - 1:
                        run.lookahead.finish()
                    val_loss, val_correct = _validate(run)
                except stops.StepsInterrupted as stopped:
                    _save_resume_state(run, resume_path, fingerprint, epoch, stopped.progress)
                    raise stops.interrupted_error(stopped, epoch, resume_path) from None
                except torch.OutOfMemoryError:
                    raise stops.oom_error(run.batch_size, epoch) from None
                # the one read of the epoch (of every rank's sums), then what depends on its numbers
                totals = read_epoch_totals(*distributed.sum_epoch_totals(
                    world, progress["losses"], progress["correct"], val_loss, val_correct))
                if totals.diverged:
                    raise stops.divergence_error(epoch, totals.first_bad_step, run.precision_key())
                record = run.end_epoch(epoch, totals, progress["lr"])
                _save_resume_state(run, resume_path, fingerprint, epoch + 1)
                log.epoch(epoch, record, time.perf_counter() - epoch_started)
        return run.result(clock, start_epoch)


def _train_steps(run: Run, epoch: int, progress: dict, stop_signal: stops.StopSignals, clock: Clock) -> None:
    """One epoch of optimizer steps from progress["step"], each step's loss and the
    correct count kept on the device in `progress`. A stop signal ends it between
    steps with StepsInterrupted."""
    losses, correct, order = progress["losses"], progress["correct"], progress["order"]
    run.model.train()
    with EpochProgressBar(epoch, run.epochs, run.steps_per_epoch, progress["step"], run.batch_size) as bar:
        for step in range(progress["step"], run.steps_per_epoch):
            clock.step_starts()
            loss, step_correct = run.step(order[step * run.batch_size:(step + 1) * run.batch_size], epoch)
            losses[step] = loss
            correct += step_correct
            progress["step"] = step + 1
            clock.step_ends()
            bar.update(step, losses, correct)
            if stop_signal.received:
                raise stops.StepsInterrupted(progress, stop_signal.received)


class EpochTotals(NamedTuple):
    mean_loss: float
    correct: float
    first_bad_step: int  # the first nan/inf loss (the last step when only validation's is); -1: none
    val_loss_sum: float
    val_correct: float

    @property
    def diverged(self) -> bool:
        return self.first_bad_step >= 0


def read_epoch_totals(losses: torch.Tensor, correct: torch.Tensor, val_loss_sum: torch.Tensor,
                      val_correct: torch.Tensor) -> EpochTotals:
    """Everything the device accumulated over an epoch, in one transfer: the mean of
    the per-step losses, the correct count, the first step whose loss is nan/inf (the
    divergence check, done here rather than with a sync every step), and the
    validation sums."""
    bad = ~torch.isfinite(losses)
    first_bad = torch.where(bad.any(), bad.int().argmax(), -1)
    mean_loss, correct, first_bad, val_loss_sum, val_correct = torch.stack([
        losses.double().mean(), correct.double(), first_bad.double(), val_loss_sum, val_correct.double(),
    ]).tolist()
    if first_bad < 0 and not math.isfinite(val_loss_sum):
        first_bad = len(losses) - 1
    return EpochTotals(mean_loss, correct, int(first_bad), val_loss_sum, val_correct)


# ---------------------------------------------------------------- what a run holds

class Run:
    """Everything that changes during training, so that it can be saved and restored
    as one resume state, and the step that changes it."""

    def __init__(self, model, data: DeviceData, params: dict, device: torch.device,
                 init_from_data: bool, world: World = ONE_PROCESS):
        self.params, self.device, self.data, self.world = params, device, data, world
        # on CPU too: oneDNN's channels-last convolutions train faster there as well
        self.channels_last = params["channels_last"]
        model = model.to(device)
        if init_from_data:  # a resumed run keeps the saved (data-initialised) weights
            with torch.no_grad():
                model.init_from_data(data.first_train_images(WHITENING_IMAGES))
        self.model = model = to_layout(model, self.channels_last)
        num_train = len(data.train_labels)
        self.batch_size = min(params["batch_size"], num_train)  # the global batch
        distributed.check_world(params, self.batch_size, world)
        # Full batches only (the remainder is reshuffled into later epochs): one shape
        # for cudnn.benchmark and torch.compile, and never a batch of one for batch norm.
        self.steps_per_epoch = num_train // self.batch_size
        self.epochs = params["epochs"]
        self.generator = torch.Generator(device=device).manual_seed(params["seed"])
        self.augment = Augmentation.from_params(params["augment"], num_train, params["seed"] + 1, device)
        self.augment.shard = world.augment_shard
        self.autocast_dtype = autocast_dtype(device, params["precision"], params["cpu_precision"])
        weight = optimization.class_weights(data.train_labels, data.classes, params["class_weights"])
        self.criterion = optimization.make_loss(params["loss"], None if weight is None else weight.to(device))
        self.unfreeze = UnfreezeSchedule(model, params["unfreeze"], params["epochs"] if world.is_writer else None)
        with self.unfreeze.all_in_optimizer():  # layers unfrozen later are in its groups from the start
            self.optimizer = optimization.make_optimizer(model, params["optimizer"], params["compile"])
        self.schedule = optimization.make_schedule(self.optimizer, params["scheduler"], self.epochs,
                                                   self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype is torch.float16)
        options = params["early_stopping"]
        self.early_stopping = optimization.EarlyStopping(options) if options["enabled"] else None
        options = params["lookahead"]
        self.lookahead = optimization.Lookahead(
            model, options["steps"], options["alpha"], options["schedule"],
            self.epochs * self.steps_per_epoch) if options["enabled"] else None
        options = params["ema"]
        self.ema = optimization.EMA(model, options["decay"]) if options["enabled"] else None
        self.step_model = distributed.data_parallel(model, world, params["sync_bn"])
        if params["compile"]:
            self.step_model = torch.compile(self.step_model)
        self.history: list[dict] = []
        self.next_epoch, self.saved_progress, self.stopped_early = 0, None, False

    @property
    def evaluated_model(self):
        """The weights that are validated and saved: the EMA's when it is on."""
        return self.ema.model if self.ema else self.model

    def start_epoch(self, epoch: int) -> dict:
        """The progress of `epoch`: the one an interrupted run saved, else a fresh one
        (its lr, its shuffled order, room for every step's loss and the correct count)."""
        progress, self.saved_progress = self.saved_progress, None
        if progress is None:
            progress = {"step": 0, "lr": _nominal_lr(self.optimizer),
                        "order": torch.randperm(len(self.data.train_labels), device=self.device,
                                                generator=self.generator),
                        "losses": torch.zeros(self.steps_per_epoch, dtype=torch.float32, device=self.device),
                        "correct": torch.zeros((), dtype=torch.int64, device=self.device)}
        if self.unfreeze.apply(epoch):
            print_line(f"epoch {epoch + 1}: unfreezing {', '.join(self.unfreeze.entries)}")
        self.model.start_epoch(epoch)
        distributed.seed_rank(self.params["seed"], epoch, self.world)
        return progress

    def step(self, indices: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the training images at `indices`. Returns the step's
        loss and correct count, left on the device. With several processes `indices` is
        the global batch, and this rank trains on its slice."""
        indices = distributed.rank_slice(indices, self.world)
        data = self.data
        images = self.augment(data.batch(data.train_images, indices), indices, epoch, self.generator)
        labels = data.train_labels[indices]
        with autocast(self.device, self.autocast_dtype):
            logits = self.step_model(to_layout(images, self.channels_last))
            loss = self.criterion(logits, labels)
            if self.model.l2_terms:
                loss = loss + self.model.regularization_loss()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.model.drop_frozen_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.after_step()
        return loss.detach(), (logits.detach().argmax(1) == labels).sum()

    def precision_key(self) -> str | None:
        """The param that turned reduced precision on for this run, None in fp32."""
        if self.autocast_dtype is None:
            return None
        return "train.cpu_precision" if self.device.type == "cpu" else "train.precision"

    def after_step(self) -> None:
        """What follows every optimizer step: the per-step schedule and weight averaging."""
        self.schedule.after_step()
        if self.lookahead:
            self.lookahead.after_step()
        if self.ema:
            self.ema.after_step()

    def end_epoch(self, epoch: int, totals: EpochTotals, lr: float) -> dict:
        """Record the epoch in the history, step the per-epoch schedule and early
        stopping with it; returns the record."""
        num_val = len(self.data.val_labels)
        seen = self.steps_per_epoch * self.batch_size
        record = {"train/loss": totals.mean_loss, "train/accuracy": totals.correct / seen}
        if num_val:
            record |= {"val/loss": totals.val_loss_sum / num_val, "val/accuracy": totals.val_correct / num_val}
        record["lr"] = lr
        self.history.append(record)
        self.schedule.after_epoch(record.get("val/loss"))
        if self.early_stopping:
            metrics = {"val_loss": record["val/loss"], "val_accuracy": record["val/accuracy"]}
            self.stopped_early = self.early_stopping.update(epoch, metrics, self.evaluated_model)
        return record

    def result(self, clock: Clock, start_epoch: int) -> TrainResult:
        """The weights to save (the EMA's, or the best epoch's when early stopping keeps
        it), in eval mode, in the standard memory layout (a reloaded model computes the
        same outputs bit for bit), with the history and the timings."""
        model = self.model.to(memory_format=torch.contiguous_format)
        if self.ema:
            model.load_state_dict(self.ema.model.state_dict())
        best_epoch = len(self.history) - 1
        if self.early_stopping and self.early_stopping.restore_best and self.early_stopping.best_state:
            self.early_stopping.restore(model)
            best_epoch = self.early_stopping.best_epoch
        model.eval()
        return TrainResult(model=model, history=self.history, best_epoch=best_epoch,
                           stopped_early=self.stopped_early, first_step_seconds=clock.first_step_seconds,
                           train_seconds=clock.seconds_without_first_step(), resumed_from_epoch=start_epoch)

    def state_dict(self, next_epoch: int, progress: dict | None) -> dict:
        parts = {"early_stopping": self.early_stopping, "lookahead": self.lookahead, "ema": self.ema}
        return {
            "format": RESUME_FORMAT,
            "next_epoch": next_epoch,
            "stopped_early": self.stopped_early,
            "progress": None if progress is None else {
                key: value.cpu() if isinstance(value, torch.Tensor) else value for key, value in progress.items()},
            "history": self.history,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            **{name: part.state_dict() for name, part in parts.items() if part is not None},
            "rng": {"torch": torch.get_rng_state(), "data": self.generator.get_state(),
                    # this process's GPU only: a machine that shows fewer GPUs can still resume
                    "cuda": [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []},
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
            torch.cuda.set_rng_state(state["rng"]["cuda"][0], self.device)
        self.history, self.next_epoch = list(state["history"]), state["next_epoch"]
        self.stopped_early = state["stopped_early"]
        progress = state["progress"]
        self.saved_progress = None if progress is None else {
            key: value.to(self.device) if isinstance(value, torch.Tensor) else value
            for key, value in progress.items()}


def _nominal_lr(optimizer) -> float:
    """The schedule's lr now, without the first group's lr_mult."""
    group = optimizer.param_groups[0]
    return float(group["lr"] / group.get("lr_mult", 1.0))


@torch.inference_mode()
def _validate(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation loss sum and correct count, in large batches on a GPU and cache-sized
    ones on a CPU (`inference_batch`), left on the device
    (zeros when data.val_split: 0 left no validation split, airbench's protocol)."""
    model, data = run.evaluated_model, run.data
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    correct = torch.zeros((), dtype=torch.int64, device=run.device)
    if not len(data.val_labels):
        return loss_sum, correct
    model.eval()
    distributed.broadcast_buffers(model, run.world)  # every rank validates with rank 0's statistics
    indices = distributed.every_nth(torch.arange(len(data.val_labels), device=run.device), run.world)
    for chunk in indices.split(inference_batch(run.device, max(4 * run.batch_size, 1024))):
        images = to_layout(data.batch(data.val_images, chunk), run.channels_last)
        labels = data.val_labels[chunk]
        with autocast(run.device, run.autocast_dtype):
            logits = model(images)
        loss_sum += run.criterion(logits, labels).double() * len(chunk)
        correct += (logits.argmax(1) == labels).sum()
    model.train()
    return loss_sum, correct


# ---------------------------------------------------------------- resume state

def run_fingerprint(params: dict, spec_text: str, meta: dict, starting_files=()) -> str:
    """What a resume state must match to be continued: params, spec, data, and the
    contents of the files the weights started from (`starting_files`)."""
    contents = {str(path): md5_of(path) for path in starting_files}
    text = json.dumps({"params": params, "spec": spec_text, "meta": meta, "starting_files": contents},
                      sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _save_resume_state(run: Run, resume_path, fingerprint: str, next_epoch: int,
                       progress: dict | None = None) -> None:
    """The one writer of the resume state: after an epoch (`next_epoch` the one to run
    next) or mid-epoch after a stop signal (`progress` of epoch `next_epoch`). `train`
    gives the processes other than the world's writer no `resume_path`."""
    if resume_path is not None:
        save_torch(resume_path, run.state_dict(next_epoch, progress) | {"fingerprint": fingerprint})


def resume_state_problem(state: dict, run: Run) -> str | None:
    """What makes a resume state of the right format and fingerprint unusable (edited or
    damaged by hand), or None: its fields' types and ranges, the model's tensors."""
    epoch = state.get("next_epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= run.epochs:
        return f"next_epoch {epoch!r} is not an epoch of this run (0 to {run.epochs})"
    if not isinstance(state.get("history"), list) or not all(isinstance(r, dict) for r in state["history"]):
        return "history is not a list of epoch records"
    if not isinstance(state.get("stopped_early"), bool):
        return "stopped_early is not true or false"
    progress = state.get("progress")
    if progress is not None:
        problem = progress_problem(progress, run)
        if problem:
            return problem
        if epoch == run.epochs:
            return "progress is saved for an epoch after the last"
    rng = state.get("rng")
    for name, current in (("torch", torch.get_rng_state()), ("data", run.generator.get_state())):
        saved = rng.get(name) if isinstance(rng, dict) else None
        if not isinstance(saved, torch.Tensor) or saved.dtype != current.dtype or saved.shape != current.shape:
            return f"rng.{name} is not a random generator state"
    weights, expected = state.get("model"), run.model.state_dict()
    if not isinstance(weights, dict) or set(weights) != set(expected):
        return "its model's tensors are not this model's"
    for key, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[key].shape:
            return f"model tensor {key} is not this model's shape"
    broken = non_finite_tensor(weights)
    if broken:
        return f"model tensor {broken} holds NaN or infinite values"
    return None


def progress_problem(progress, run: Run) -> str | None:
    """What is wrong with a mid-epoch progress record (Run.start_epoch's fields: the step
    to go on from, the epoch's lr, shuffled order, per-step losses and correct count),
    or None. Every index the remaining steps take from `order` must be a training image."""
    if not isinstance(progress, dict):
        return "progress is neither empty nor a record"
    missing = [key for key in ("step", "lr", "order", "losses", "correct") if key not in progress]
    if missing:
        return f"progress lacks {', '.join(missing)}"
    step, lr, order = progress["step"], progress["lr"], progress["order"]
    losses, correct = progress["losses"], progress["correct"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= run.steps_per_epoch:
        return f"progress.step {step!r} is not a step of the epoch (0 to {run.steps_per_epoch})"
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
        return "progress.lr is not a number"
    images = len(run.data.train_labels)
    if not (isinstance(order, torch.Tensor) and order.dtype == torch.int64 and order.shape == (images,)):
        return f"progress.order is not an order of the {images} training images"
    if images and not (0 <= int(order.min()) and int(order.max()) < images):
        return f"progress.order holds an index outside 0 to {images - 1}"
    if not (isinstance(losses, torch.Tensor) and losses.is_floating_point()
            and losses.shape == (run.steps_per_epoch,)):
        return f"progress.losses is not one loss for each of the {run.steps_per_epoch} steps"
    if not (isinstance(correct, torch.Tensor) and correct.dtype == torch.int64 and correct.dim() == 0):
        return "progress.correct is not a count"
    return None


def load_resume_state(run: Run, state: dict, resume_path) -> None:
    """Continue `run` from `state`; a state that cannot be continued is set aside (so the
    next run starts over) and stops this one with one line saying why."""
    problem = resume_state_problem(state, run)
    if problem is None:
        try:
            run.load_state_dict(state)
        except Exception as error:  # noqa: BLE001 - a field torch refuses: the same answer
            problem = first_line(error)[:160]
    if problem is not None:
        where = resume_path if resume_path is not None else "the resume state"
        aside = f"; moved it to {set_aside(Path(resume_path))}" if resume_path is not None else ""
        raise TrainingError(f"{where}: a damaged resume state ({problem}){aside}; run the train stage "
                            "again to start over")


def read_resume_state(path, fingerprint: str) -> dict | None:
    """The saved state when it belongs to this run, else None (with a note why)."""
    path = Path(path)
    if not path.is_file():
        return None
    why = None
    try:
        state = load_torch_file(path)
    except UnsafeTorchFile as problem:
        why = str(problem)
    except Exception as error:  # a torn or foreign file: set it aside and start over
        why = type(error).__name__
    if why:
        aside = set_aside(path)
        print(f"note: resume state {path} is damaged ({why}); moved it to {aside} "
              "and training starts over from epoch 1", file=sys.stderr)
        return None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        print(f"note: ignoring {path}: not a cnnspec resume state of this version", file=sys.stderr)
        return None
    if state.get("fingerprint") != fingerprint:
        print(f"note: ignoring {path}: it was saved for other params, spec, data or device", file=sys.stderr)
        return None
    return state
