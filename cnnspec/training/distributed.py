"""Data-parallel training over several processes, with torch.distributed's own parts:
`torch.distributed.run` (torchrun) starts the processes, DistributedDataParallel
averages the gradients, gloo (CPU) or NCCL (CUDA) carries them.

    train.devices: 2        # params.yaml: the train stage launches 2 processes itself
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-endpoint=HOST:29400 stages/train.py

A process started by torchrun (RANK, WORLD_SIZE and LOCAL_RANK in its environment)
joins as one rank, whatever `train.devices` says; any other train stage with
`train.devices` above 1 launches itself through torchrun on this machine. One process
(WORLD_SIZE=1 included) is a `World` of size one, and joins no process group.

What a rank does differently from a single process (cnnspec/training/loop.py calls these
with its World; for a world of size one each of them does nothing):
- every rank draws the same permutation of the training set each epoch, from the
  same seeded generator, and takes its slice of every global batch
  (`rank_slice`): the ranks together see exactly the images, in the order, that one
  process would, and `train.batch_size` is the global batch;
- augmentation draws its random numbers for the whole global batch and keeps the
  rank's rows, so the data generator stays in step with a single process;
- dropout's generator is seeded per rank and epoch, so ranks do not share masks;
- losses and correct counts are summed over the ranks once per epoch, before they
  are logged; validation is split between the ranks and summed the same way;
- only rank 0 writes: DVCLive, the resume state, the checkpoint, the printed lines.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from cnnspec.errors import CnnspecError, ParamsError, TrainingError
from cnnspec.training.device import pick_device

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
LAUNCHED_BY_CNNSPEC = "CNNSPEC_LAUNCHED"  # set for the ranks our own launcher starts
PEER_LOST_EXIT = 75  # a rank that stops because another rank died first
RESUME_INDEPENDENT_KEYS = ("devices", "backend")  # a resume state survives a change of these


@dataclass(frozen=True)
class World:
    """The processes of a training run and this one's place among them. One process
    is a world of size one: every collective below is then a no-op and no process
    group exists, so the loop reads the same whatever the size."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device | None = None  # this process's device (None: the caller's choice)
    backend: str = "none"  # gloo or nccl when size > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0: the one process that writes files (resume state, DVCLive, the
        checkpoint) and prints the run's lines."""
        return self.rank == 0

    @property
    def handles_signals(self) -> bool:
        """One process turns Ctrl-C / SIGTERM into a saved mid-epoch state; several
        are stopped by torchrun, and keep the last finished epoch."""
        return self.size == 1

    @property
    def augment_shard(self) -> tuple[int, int] | None:
        """What augment.Augmentation.shard takes: None for one process."""
        return None if self.size == 1 else (self.rank, self.size)

    def __str__(self) -> str:
        if self.size == 1:
            return str(self.device)
        return f"{self.size} processes ({self.device.type}, {self.backend})"


ONE_PROCESS = World()


# ---------------------------------------------------------------- what was asked for

def torchrun_environment(env=None) -> dict | None:
    """{"rank", "world_size", "local_rank"} when torchrun started this process, else None."""
    env = os.environ if env is None else env
    present = [name for name in TORCHRUN_VARIABLES if name in env]
    if not present:
        return None
    if len(present) < len(TORCHRUN_VARIABLES):
        missing = [name for name in TORCHRUN_VARIABLES if name not in env]
        raise TrainingError(f"the environment sets {', '.join(present)} but not {', '.join(missing)}; "
                            "start several processes with torchrun, or unset them to train in one")
    try:
        rank, world_size, local_rank = (int(env[name]) for name in TORCHRUN_VARIABLES)
    except ValueError:
        values = ", ".join(f"{name}={env[name]!r}" for name in TORCHRUN_VARIABLES)
        raise TrainingError(f"torchrun environment is not made of integers: {values}") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise TrainingError(f"torchrun environment is inconsistent: RANK={rank}, "
                            f"WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}")
    return {"rank": rank, "world_size": world_size, "local_rank": local_rank}


def uses_cuda(device_name: str) -> bool:
    """Whether `train.device` puts this run on CUDA."""
    return device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())


def process_count(options: dict) -> int:
    """How many processes `train.devices` asks for on this machine, checked against
    what the machine has: `auto` is one per CUDA device (1 without CUDA)."""
    devices, device_name = options["devices"], options["device"]
    cuda = uses_cuda(device_name)
    if devices == "auto":
        return max(1, torch.cuda.device_count()) if cuda and device_name in ("auto", "cuda") else 1
    if devices == 1:
        return 1
    if device_name.startswith("cuda:") or device_name == "mps":
        raise ParamsError(f"params.yaml: train.devices: {devices} with train.device: {device_name}: a pinned "
                          "device holds one process; use train.device: cuda (or auto) and choose the GPUs "
                          "with CUDA_VISIBLE_DEVICES")
    if cuda:
        available = torch.cuda.device_count()
        if devices > available:
            raise ParamsError(f"params.yaml: train.devices: {devices}, but this machine has {available} "
                              f"CUDA device{'s' if available != 1 else ''}; use at most {available} or auto")
    else:
        cores = os.cpu_count() or 1
        if devices > cores:
            raise ParamsError(f"params.yaml: train.devices: {devices} processes on the CPU, but this "
                              f"machine has {cores} cores; use at most {cores}")
    return devices


def choose_backend(requested: str, cuda: bool) -> str:
    """`train.backend`: auto is NCCL on CUDA and gloo on the CPU; either must exist here."""
    if not torch.distributed.is_available():
        raise TrainingError("this torch build has no torch.distributed; train.devices must be 1")
    backend = requested if requested != "auto" else ("nccl" if cuda else "gloo")
    if backend == "nccl" and not cuda:
        raise ParamsError("params.yaml: train.backend: nccl needs CUDA devices, but this run is on the "
                          "CPU; use train.backend: gloo (or auto)")
    available = {"nccl": torch.distributed.is_nccl_available, "gloo": torch.distributed.is_gloo_available}
    if not available[backend]():
        raise TrainingError(f"params.yaml: train.backend: {backend} is not available in this torch build; "
                            f"use train.backend: {'gloo' if backend == 'nccl' else 'nccl'}")
    return backend


def local_batch_size(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global batch `train.batch_size`."""
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        suggestion = f"{lower} or {lower + world_size}" if lower else str(world_size)
        raise ParamsError(f"params.yaml: train.batch_size: {batch_size} cannot be split evenly between "
                          f"{world_size} processes (train.devices); use a multiple of {world_size}, "
                          f"such as {suggestion}")
    return batch_size // world_size


def check_unfreeze(options: dict) -> None:
    """DistributedDataParallel averages the gradients of the parameters that train when
    it is built; layers unfrozen later would train apart on each rank."""
    if options["unfreeze"]["layers"]:
        raise ParamsError("params.yaml: train.unfreeze with train.devices above 1 is not supported "
                          "(DistributedDataParallel keeps the set of trained parameters it starts with); "
                          "train on one process, or mark the layers trainable in the spec")


def check_sync_bn(sync_bn: bool, cuda: bool) -> None:
    if sync_bn and not cuda:
        raise ParamsError("params.yaml: train.sync_bn: true needs CUDA devices (torch's SyncBatchNorm "
                          "runs on GPUs only); set it to false to train on the CPU")


def check_world(options: dict, batch_size: int, world: World) -> None:
    """What the loop checks before its first step: the global batch splits evenly
    between the ranks, and no layer unfreezes part-way (else a ParamsError)."""
    if world.size > 1:
        local_batch_size(batch_size, world.size)
        check_unfreeze(options)


def check_request(options: dict, world_size: int) -> None:
    """Every impossible request, before any process starts: the backend, the batch
    split, synchronised batch norm, layers unfrozen part-way."""
    cuda = uses_cuda(options["device"])
    choose_backend(options["backend"], cuda)
    local_batch_size(options["batch_size"], world_size)
    check_sync_bn(options["sync_bn"], cuda)
    check_unfreeze(options)


def fingerprint_params(params: dict) -> dict:
    """params without what a resume state may change: the number of processes and the
    backend (a run killed on 2 processes may continue on 1, or on 4)."""
    train = {key: value for key, value in params["train"].items() if key not in RESUME_INDEPENDENT_KEYS}
    return {**params, "train": train}


# ---------------------------------------------------------------- joining and leaving

def rank_device(device_name: str, local_rank: int) -> torch.device:
    """CUDA device number LOCAL_RANK (of those CUDA_VISIBLE_DEVICES shows), or the CPU."""
    if not uses_cuda(device_name):
        if device_name == "mps":
            raise ParamsError("params.yaml: train.device: mps holds one process; torch.distributed has "
                              "no backend for it")
        return torch.device("cpu")
    if device_name.startswith("cuda:"):
        raise ParamsError(f"params.yaml: train.device: {device_name} pins one GPU, but this process is one "
                          "of several; use train.device: cuda and CUDA_VISIBLE_DEVICES")
    available = torch.cuda.device_count()
    if local_rank >= available:
        raise TrainingError(f"LOCAL_RANK {local_rank} has no CUDA device: this node shows {available}; "
                            "start at most that many processes per node (--nproc_per_node)")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def joined(options: dict, env=None):
    """Under torchrun with several processes: join the process group (env://
    rendezvous), yield this process's World, leave the group afterwards. Otherwise
    yield a world of size one on `train.device` (no process group)."""
    place = torchrun_environment(env)
    if place is None or place["world_size"] == 1:
        yield World(device=pick_device(options["device"]))
        return
    device = rank_device(options["device"], place["local_rank"])
    backend = choose_backend(options["backend"], device.type == "cuda")
    check_sync_bn(options["sync_bn"], device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    world = World(place["rank"], place["world_size"], place["local_rank"], device, backend)
    try:
        with _silent_unless(world.is_writer):
            yield world
    finally:
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def _silent_unless(speaks: bool):
    """Only rank 0 prints (epoch lines, notes, progress bars): the others' Python-level
    output goes nowhere while they train. A traceback is printed after this context
    has ended, so a rank's crash is still shown."""
    if speaks:
        yield
        return
    with open(os.devnull, "w", encoding="utf-8") as nowhere, \
            contextlib.redirect_stdout(nowhere), contextlib.redirect_stderr(nowhere):
        yield


# ---------------------------------------------------------------- inside the loop

def rank_slice(indices: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous share of a global batch's `indices`."""
    if world.size == 1:
        return indices
    share = len(indices) // world.size
    return indices[world.rank * share:(world.rank + 1) * share]


def every_nth(indices: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's share of the validation images: every size-th one from its rank."""
    return indices if world.size == 1 else indices[world.rank::world.size]


def seed_rank(seed: int, epoch: int, world: World) -> None:
    """Give this rank's dropout (torch's global generator) its own stream, from the seed,
    the epoch and the rank only, so a run resumed at an epoch draws what it drew before.
    One process keeps its generator as it is (its resume state holds it)."""
    if world.size > 1:
        torch.manual_seed(int(np.random.SeedSequence([seed, epoch, world.rank]).generate_state(1)[0]))


def data_parallel(model: torch.nn.Module, world: World, sync_bn: bool) -> torch.nn.Module:
    """`model` wrapped in DistributedDataParallel (batch norm synchronised when asked);
    `model` itself for one process. The wrapper shares the model's parameters;
    checkpoints are taken from `model`, so their keys carry no `module.` prefix."""
    if world.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the layers in place
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)


def from_rank_0(world: World, read):
    """What `read()` returns on rank 0, on every rank: a resume state lives on rank 0's
    disk, and the ranks of other nodes must continue from the same one."""
    if world.size == 1:
        return read()
    box = [read() if world.is_writer else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: torch.nn.Module, world: World) -> None:
    """Rank 0's buffers (batch-norm running statistics) to every rank: each rank updated
    its own in the last training step, and the weights saved are rank 0's."""
    if world.size == 1:
        return
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)


def sum_epoch_totals(world: World, losses: torch.Tensor, correct: torch.Tensor, val_loss: torch.Tensor,
                     val_correct: torch.Tensor):
    """The epoch's device-side totals over every rank, in one all-reduce: per-step losses
    averaged (each rank's is the mean of its equal share), counts and sums added."""
    if world.size == 1:
        return losses, correct, val_loss, val_correct
    packed = torch.cat([losses.double(), correct.double().view(1), val_loss.double().view(1),
                        val_correct.double().view(1)])
    torch.distributed.all_reduce(packed)
    steps = len(losses)
    return packed[:steps] / world.size, packed[steps], packed[steps + 1], packed[steps + 2]


# ---------------------------------------------------------------- launching

def launch(nproc: int, script: str, args=()) -> None:
    """Run `python script args` as `nproc` ranks on this machine through
    torch.distributed.run (torchrun --standalone), and wait for them. A rank that fails
    stops them all; the cause becomes one TrainingError line (a user mistake a rank
    reported keeps its own words and exit status)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    arguments = ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), script, *args]
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    with _environment({"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads),
                       LAUNCHED_BY_CNNSPEC: "1"}), _quiet_torchrun_logs():
        try:
            torchrun.run(torchrun.parse_args(arguments))
        except ChildFailedError as failed:
            raise _launch_error(failed) from None
        except SignalException as stopped:
            name = signal.Signals(stopped.sigval).name
            error = TrainingError(f"training stopped by {name}; every rank was stopped; the last "
                                  "finished epoch is saved, run the train stage again to continue")
            error.exit_code = 128 + int(stopped.sigval)
            raise error from None


def _launch_error(failed) -> CnnspecError:
    failures = sorted(failed.failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    for _rank, failure in failures:  # a user mistake reported by a rank: its own line
        message = failure.message if isinstance(failure.message, str) else ""
        if failure.exitcode > 0 and message.startswith("cnnspec: "):
            error = TrainingError(message[len("cnnspec: "):])
            error.exit_code = failure.exitcode
            return error
    # The cause, before its consequences: torchrun stops the other ranks with SIGTERM,
    # and a rank that lost its peer exits with PEER_LOST_EXIT.
    def consequence(item) -> int:
        exitcode = item[1].exitcode
        return 2 if exitcode == PEER_LOST_EXIT else 1 if exitcode == -signal.SIGTERM else 0

    rank, failure = sorted(failures, key=consequence)[0]
    cause = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
             else f"exited with status {failure.exitcode}")
    return TrainingError(f"rank {rank} (pid {failure.pid}) {cause}; every rank was stopped; the last "
                         "finished epoch is saved, run the train stage again to continue")


@contextlib.contextmanager
def _environment(values: dict):
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _quiet_torchrun_logs():
    """torchrun's agent logs every stop at WARNING/ERROR with a table of each rank;
    cnnspec says it in one line instead (CNNSPEC_DEBUG=1 keeps the agent's logs)."""
    from cnnspec.errors import debug_enabled

    if debug_enabled():
        yield
        return
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith("torch.distributed")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# ---------------------------------------------------------------- a rank's exit

def exit_as_rank(main, ranks_env=None):
    """Run a rank's `main` under torchrun and turn how it ends into an exit status:
    a user mistake is written to torchrun's error file (the launcher prints it once,
    for every rank) or, under a torchrun the user started, printed by the rank;
    a rank that stops because another one died exits quietly with PEER_LOST_EXIT."""
    from cnnspec.errors import debug_enabled

    place = torchrun_environment(ranks_env) or {"rank": 0}
    try:
        return main()
    except CnnspecError as error:
        if debug_enabled():
            raise
        _report(f"cnnspec: {error}", place["rank"])
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except RuntimeError as error:  # gloo / NCCL: the connection to a rank that died
        if debug_enabled() or not _peer_lost(error):
            raise
        sys.exit(PEER_LOST_EXIT)


def _peer_lost(error: RuntimeError) -> bool:
    if isinstance(error, torch.distributed.DistError):
        return True
    text = str(error)
    return any(sign in text for sign in ("Connection closed by peer", "Connection reset by peer",
                                         "Broken pipe", "NCCL communicator was aborted"))


def _report(message: str, rank: int) -> None:
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        with open(error_file, "w", encoding="utf-8") as out:
            json.dump({"message": message, "timestamp": int(time.time())}, out)
    if os.environ.get(LAUNCHED_BY_CNNSPEC) != "1":
        print(f"error: rank {rank}: {message[len('cnnspec: '):]}", file=sys.stderr)
