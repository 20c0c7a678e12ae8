"""Data-parallel training on the CPU with gloo (cnnspec/training/distributed.py): the sharding of
every epoch, augmentation that stays in step with one process, the checks that refuse
impossible requests, and real multi-process runs through torchrun: a checkpoint that
loads and scores like a single process's, only rank 0 writing, a rank killed and the
run resumed on the same or another number of processes."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cnnspec.errors import ParamsError, TrainingError
from cnnspec.pipeline.params import load_params
from cnnspec.training import distributed
from cnnspec.training.augment import Augmentation
from cnnspec.training.device import pick_device
from cnnspec.training.loop import run_fingerprint
from tests.tinytraining import write_stage_inputs

REPO_ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
CPU = torch.device("cpu")


def ranks_of(world_size: int):
    return [distributed.World(rank, world_size, rank, CPU, "gloo") for rank in range(world_size)]


def epoch_shard(order: torch.Tensor, steps: int, batch_size: int, ranks) -> torch.Tensor:
    """Every index a rank trains on in an epoch of `order`: its `rank_slice` of each global batch."""
    return torch.cat([distributed.rank_slice(order[step * batch_size:(step + 1) * batch_size], ranks)
                      for step in range(steps)])


# ---------------------------------------------------------------- sharding

@pytest.mark.parametrize("num_images, batch_size, world_size", [
    (96, 12, 2), (96, 12, 3), (96, 12, 4), (100, 12, 2), (60, 60, 2), (97, 8, 1)])
def test_rank_shards_cover_every_image_of_the_epoch_exactly_once(num_images, batch_size, world_size):
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(num_images))
    steps = num_images // batch_size  # full batches only, as the loop trains
    shards = [epoch_shard(order, steps, batch_size, ranks) for ranks in ranks_of(world_size)]
    together = torch.cat(shards)
    assert len(together) == len(set(together.tolist())) == steps * batch_size  # nobody sees an image twice
    assert sorted(together.tolist()) == sorted(order[:steps * batch_size].tolist())  # one process's images
    if num_images % batch_size == 0:
        assert sorted(together.tolist()) == list(range(num_images))
    for step in range(steps):  # every global batch is the ranks' slices, in rank order
        global_batch = order[step * batch_size:(step + 1) * batch_size]
        slices = [distributed.rank_slice(global_batch, ranks) for ranks in ranks_of(world_size)]
        assert torch.equal(torch.cat(slices), global_batch)
        assert {len(part) for part in slices} == {batch_size // world_size}


def test_sharded_augmentation_gives_each_image_the_draw_one_process_gives_it():
    images = torch.randint(0, 256, (8, 3, 10, 10), dtype=torch.uint8)
    indices = torch.arange(8)
    options = {"hflip": True, "alternating_flip": False, "vflip": True, "translate": 2, "crop_padding": 1,
               "cutout": 3}
    whole = Augmentation.from_params(options, 8, 0, CPU)
    one_process = torch.Generator().manual_seed(5)
    expected = whole(images, indices, 0, one_process)
    parts, generators = [], []
    for ranks in ranks_of(2):
        shard = Augmentation.from_params(options, 8, 0, CPU)
        shard.shard = ranks.augment_shard
        generator = torch.Generator().manual_seed(5)
        mine = distributed.rank_slice(indices, ranks)
        parts.append(shard(images[mine], mine, 0, generator))
        generators.append(generator)
    assert torch.equal(torch.cat(parts), expected)
    for generator in generators:  # every rank's generator stays where one process's is
        assert torch.equal(generator.get_state(), one_process.get_state())


def test_each_rank_gets_its_own_dropout_stream_that_a_resumed_epoch_repeats():
    draws = {}
    for ranks in ranks_of(2):
        distributed.seed_rank(0, 3, ranks)
        draws[ranks.rank] = torch.rand(4)
    assert not torch.equal(draws[0], draws[1])
    distributed.seed_rank(0, 3, ranks_of(2)[1])
    assert torch.equal(torch.rand(4), draws[1])


def test_one_process_is_a_world_of_size_one_whose_collectives_do_nothing():
    """No process group exists for one process: every collective the loop calls hands
    back its input, so the loop needs no branch of its own for it."""
    world = distributed.World(device=CPU)
    assert world.is_writer and world.handles_signals and world.augment_shard is None
    assert not torch.distributed.is_initialized()
    indices, losses = torch.arange(10), torch.rand(5)
    assert distributed.rank_slice(indices, world) is indices
    assert distributed.every_nth(indices, world) is indices
    sums = (losses, torch.tensor(3), torch.tensor(1.5, dtype=torch.float64), torch.tensor(2))
    assert all(a is b for a, b in zip(distributed.sum_epoch_totals(world, *sums), sums))
    assert distributed.from_rank_0(world, lambda: "state") == "state"
    model = torch.nn.Linear(2, 2)
    assert distributed.data_parallel(model, world, sync_bn=True) is model
    distributed.broadcast_buffers(model, world)
    before = torch.get_rng_state()
    distributed.seed_rank(0, 3, world)  # one process keeps its generator: its resume state holds it
    assert torch.equal(torch.get_rng_state(), before)
    distributed.check_world(train_options(unfreeze={"after_epochs": 1, "layers": ["conv_1"]},
                                          batch_size=33), 33, world)  # nothing to split, no DDP
    assert str(world) == "cpu"
    assert str(distributed.World(1, 2, 1, CPU, "gloo")) == "2 processes (cpu, gloo)"


@pytest.mark.parametrize("env", [{}, {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}])
def test_joined_without_several_processes_yields_a_world_of_one_and_no_process_group(env):
    with distributed.joined(train_options(device="cpu"), env) as world:
        assert (world.rank, world.size, world.device) == (0, 1, CPU)
        assert not torch.distributed.is_initialized()


def test_a_world_of_several_refuses_an_uneven_batch_and_unfreezing():
    world = ranks_of(2)[1]
    assert not world.is_writer and not world.handles_signals and world.augment_shard == (1, 2)
    with pytest.raises(ParamsError, match="cannot be split evenly between 2 processes"):
        distributed.check_world(train_options(), 33, world)
    with pytest.raises(ParamsError, match="train.unfreeze with train.devices above 1"):
        distributed.check_world(train_options(unfreeze={"after_epochs": 1, "layers": ["conv_1"]}), 32, world)


# ---------------------------------------------------------------- requests and their errors

def train_options(**changes) -> dict:
    params = load_params(REPO_ROOT / "params.yaml", sections=["train"])["train"]
    return {**params, "device": "cpu", **changes}


def test_torchrun_environment_is_read_and_checked():
    assert distributed.torchrun_environment({}) is None
    place = distributed.torchrun_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert place == {"rank": 3, "world_size": 4, "local_rank": 1}
    with pytest.raises(TrainingError, match="sets RANK but not WORLD_SIZE, LOCAL_RANK"):
        distributed.torchrun_environment({"RANK": "0"})
    with pytest.raises(TrainingError, match="inconsistent"):
        distributed.torchrun_environment({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})


def test_process_count_auto_and_numbers_on_the_cpu():
    assert distributed.process_count(train_options(devices="auto")) == 1
    assert distributed.process_count(train_options(devices=1)) == 1
    assert distributed.process_count(train_options(devices=2)) == 2


@pytest.mark.parametrize("changes, words", [
    ({"devices": 100_000}, "train.devices: 100000 processes on the CPU, but this machine has"),
    ({"devices": 2, "device": "cuda:1"}, "pinned device holds one process"),
])
def test_more_devices_than_there_are_is_one_line(changes, words):
    with pytest.raises(ParamsError, match=words) as caught:
        distributed.process_count(train_options(**changes))
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_more_gpus_than_there_are_names_the_count():
    with pytest.raises(ParamsError, match="train.devices: 2, but this machine has 0 CUDA devices"):
        distributed.process_count(train_options(devices=2, device="cuda"))


def test_a_batch_that_does_not_split_evenly_is_refused_with_a_suggestion():
    assert distributed.local_batch_size(1024, 4) == 256
    with pytest.raises(ParamsError, match="train.batch_size: 100 cannot be split evenly between 3 "
                                          "processes.*multiple of 3, such as 99 or 102"):
        distributed.local_batch_size(100, 3)


def test_unavailable_backend_cpu_sync_bn_and_unfreezing_are_refused():
    assert distributed.choose_backend("auto", cuda=False) == "gloo"
    with pytest.raises(ParamsError, match="train.backend: nccl needs CUDA devices"):
        distributed.choose_backend("nccl", cuda=False)
    with pytest.raises(ParamsError, match="train.sync_bn: true needs CUDA"):
        distributed.check_request(train_options(devices=2, batch_size=64, sync_bn=True), 2)
    with pytest.raises(ParamsError, match="train.unfreeze with train.devices above 1 is not supported"):
        distributed.check_request(train_options(devices=2, batch_size=64,
                                                unfreeze={"after_epochs": 2, "layers": ["conv_1"]}), 2)
    distributed.check_request(train_options(devices=2, batch_size=64), 2)  # a possible one passes


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("name, words", [("cuda:1", "train.device: cuda:1 is not available"),
                                         ("cuda", "train.device: cuda is not available")])
def test_pinned_cuda_device_without_cuda_is_one_line(name, words):
    with pytest.raises(ParamsError, match=words):
        pick_device(name)


def test_mps_is_refused_where_torch_has_none():
    if torch.backends.mps.is_available():
        assert pick_device("mps").type == "mps"
    else:
        with pytest.raises(ParamsError, match="train.device: mps is not available"):
            pick_device("mps")


def test_device_param_takes_pinned_gpus_and_refuses_other_words(tmp_path):
    for good in ("cuda:0", "cuda:12", "mps", "auto"):
        (tmp_path / "params.yaml").write_text(f"train:\n  device: {good}\n  devices: auto\n")
        assert load_params(tmp_path / "params.yaml", ["train"])["train"]["device"] == good
    for bad, words in [("device: 'cuda:x'", "train.device: 'cuda:x' is not auto, cpu, cuda, cuda:N"),
                       ("devices: two", "train.devices: 'two' is not a number of processes"),
                       ("devices: 0", "train.devices: 0 is less than the minimum of 1")]:
        (tmp_path / "params.yaml").write_text(f"train:\n  {bad}\n")
        with pytest.raises(ParamsError, match=words):
            load_params(tmp_path / "params.yaml", ["train"])


def test_a_resume_state_fits_any_number_of_processes_but_not_other_params():
    params = {"model": {"spec": "s.yaml"}, "train": train_options(devices=1)}
    fingerprint = run_fingerprint(distributed.fingerprint_params(params), "spec", {})
    more = {**params, "train": {**params["train"], "devices": 4, "backend": "gloo"}}
    other = {**params, "train": {**params["train"], "batch_size": 7}}
    assert run_fingerprint(distributed.fingerprint_params(more), "spec", {}) == fingerprint
    assert run_fingerprint(distributed.fingerprint_params(other), "spec", {}) != fingerprint


# ---------------------------------------------------------------- several processes

# No batch norm: two processes then compute what one does up to the order of float
# sums (batch norm would normalise each rank's half batch on its own; docs/scaling.md).
SMALL_SPEC = """name: small
layers:
  - conv: {filters: 16, kernel: 3}
  - activation: relu
  - max_pool: 2
  - conv: {filters: 32, kernel: 3}
  - activation: relu
  - max_pool: 2
  - flatten
  - dense: {units: num_classes}
"""


def fashion_stage_folder(folder: Path, n_train: int, n_test: int, **train) -> Path:
    """A stage's working folder with a subset of Debian's Fashion-MNIST, prepared."""
    from benchmarks.bench_data_parallel import write_fashion

    write_fashion(folder, FASHION, n_train, n_test, val_split=0.1)
    write_stage_params(folder, SMALL_SPEC, **train)
    return folder


def write_stage_params(folder: Path, spec: str, **train) -> None:
    (folder / "specs").mkdir(parents=True, exist_ok=True)
    (folder / "specs" / "small.yaml").write_text(spec)
    options = {"device": "cpu", "epochs": 2, "batch_size": 64, "precision": "off",
               "optimizer": {"name": "adam", "lr": 0.003, "weight_decay": 0.0},
               "scheduler": {"name": "none"}, "lookahead": {"enabled": False},
               "loss": {"label_smoothing": 0.0}, "augment": {"alternating_flip": False, "translate": 1}}
    options.update(train)
    (folder / "params.yaml").write_text(yaml.safe_dump({"model": {"spec": "specs/small.yaml"}, "train": options}))


def set_param(folder: Path, key: str, value) -> None:
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["train"][key] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def stage_environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def run_stage(folder: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "train.py")], cwd=folder,
                          capture_output=True, text=True, timeout=180, env=stage_environment(), **kwargs)


def test_stage_refuses_a_batch_that_does_not_split_before_starting_anything(tmp_path):
    write_stage_params(tmp_path, SMALL_SPEC, devices=2, batch_size=63)
    finished = run_stage(tmp_path)
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr.strip().splitlines() == [
        "error: params.yaml: train.batch_size: 63 cannot be split evenly between 2 processes "
        "(train.devices); use a multiple of 2, such as 62 or 64"]
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


@pytest.mark.slow
def test_a_mistake_every_rank_finds_is_told_once_in_its_own_words(tmp_path):
    write_stage_params(tmp_path, SMALL_SPEC, devices=2)  # no data/prepared: each rank fails to read it
    finished = run_stage(tmp_path)
    assert finished.returncode == 1
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data/prepared/meta.json: missing"), finished.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


def accuracy_of(model_path: Path, folder: Path, split: str = "test") -> float:
    """The checkpoint's accuracy on a prepared split, through cnnspec's own inference model
    (its normalization is the one training and evaluation use)."""
    import cnnspec
    from cnnspec.data.datasets import load_prepared

    model = cnnspec.load_model(model_path)
    data = load_prepared(folder / "data" / "prepared")
    with torch.inference_mode():
        predicted = model.logits(torch.from_numpy(np.ascontiguousarray(data[f"{split}_images"]))).argmax(1)
    return (predicted == torch.from_numpy(data[f"{split}_labels"])).double().mean().item()


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_two_processes_train_a_checkpoint_that_scores_like_one_process(tmp_path):
    """The two-process run is `torchrun --nproc-per-node 2 stages/train.py`, as on a
    cluster: the stage sees the torchrun environment and trains as one of its ranks
    instead of launching its own (its own launch, train.devices: 2, is what the killed
    run below and the pipeline's two-process experiment use)."""
    import shutil

    one, two = tmp_path / "one", tmp_path / "two"
    fashion_stage_folder(one, n_train=2000, n_test=1000)
    shutil.copytree(one, two)  # train.devices is left at 1 in both: torchrun's environment wins
    single = run_stage(one)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node", "2", str(REPO_ROOT / "stages" / "train.py")],
                            cwd=two, capture_output=True, text=True, timeout=180, env=stage_environment())
    assert double.returncode == 0, double.stderr
    assert double.stdout.count("on 2 processes (cpu, gloo)") == 1
    assert "launching" not in double.stdout  # no launch of its own
    assert double.stdout.count("epoch 2/2") == 1  # printed by rank 0 alone
    from benchmarks.bench_data_parallel import STAGE_LINE  # what the scaling benchmark reads

    assert STAGE_LINE.search(single.stdout) and STAGE_LINE.search(double.stdout)
    state = torch.load(two / "models" / "model.pt", weights_only=True)["state_dict"]
    reference = torch.load(one / "models" / "model.pt", weights_only=True)["state_dict"]
    assert list(state) == list(reference)  # no `module.` prefix
    assert not any(key.startswith("module.") for key in state)
    accuracy_one, accuracy_two = accuracy_of(one / "models" / "model.pt", one), \
        accuracy_of(two / "models" / "model.pt", two)
    assert accuracy_one > 0.6, accuracy_one  # it learned (chance is 0.1)
    assert abs(accuracy_two - accuracy_one) <= 0.01, (accuracy_one, accuracy_two)
    # what rank 0 logged is the whole validation split's, summed over both ranks' halves
    logged = json.loads((two / "metrics" / "train" / "metrics.json").read_text())["val"]["accuracy"]
    assert logged == pytest.approx(accuracy_of(two / "models" / "model.pt", two, "val"), abs=1 / 200)
    assert not (two / "models" / "resume" / "state.pt").exists()


RANK_WRITER = """
import os, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.tinytraining import tiny_data, tiny_model, train_params
from cnnspec.training import distributed
from cnnspec.training.loop import train

root = Path(sys.argv[1])
options = train_params(epochs=int(sys.argv[2]), batch_size=16, devices=2)
with distributed.joined(options) as ranks:
    mine = root / f"rank{{ranks.rank}}"
    print(f"rank {{ranks.rank}} speaks", flush=True)
    train(tiny_model(), tiny_data(), options, ranks.device, resume_path=mine / "resume" / "state.pt",
          log_dir=mine / "log", fingerprint="f", world=ranks)
"""


@pytest.mark.slow
def test_only_rank_0_writes_and_every_rank_resumes_from_its_state(tmp_path):
    """Each rank is given its own folder, as if each were on its own node: only rank 0's
    gets files, and a second run resumes on both ranks from the state on rank 0's disk
    (rank 1 has none; were it to start over, the ranks' steps would not match)."""
    script = tmp_path / "ranks.py"
    script.write_text(RANK_WRITER.format(root=str(REPO_ROOT)))

    def launch(epochs):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               "--nproc-per-node", "2", str(script), str(tmp_path), str(epochs)],
                              capture_output=True, text=True, timeout=180, env=stage_environment())

    finished = launch(2)  # under a torchrun the user started
    assert finished.returncode == 0, finished.stderr
    assert (tmp_path / "rank0" / "resume" / "state.pt").is_file()
    assert json.loads((tmp_path / "rank0" / "log" / "metrics.json").read_text())["step"] == 1
    assert not (tmp_path / "rank1").exists()
    assert "rank 0 speaks" in finished.stdout and "rank 1 speaks" not in finished.stdout
    assert finished.stdout.count("epoch 1/2") == 1
    longer = launch(3)
    assert longer.returncode == 0, longer.stderr
    assert longer.stderr.count("resuming from") == 1 and "at epoch 3" in longer.stderr
    assert "epoch 1/3" not in longer.stdout and longer.stdout.count("epoch 3/3") == 1
    assert json.loads((tmp_path / "rank0" / "log" / "metrics.json").read_text())["step"] == 2
    assert not (tmp_path / "rank1").exists()


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """RANK -> pid of the processes a launcher started (its children under torchrun)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, StopIteration):
            continue
        if parent == launcher_pid:
            for item in environ:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(entry.name)
    return found


KILL_PARAMS = {"devices": 2, "epochs": 30, "batch_size": 16}


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A 2-process stage run on tiny data whose rank 1 is SIGKILLed once the resume state
    of an epoch exists: (folder, finished process, next_epoch saved)."""

    folder = tmp_path_factory.mktemp("killed")
    write_stage_inputs(folder, **KILL_PARAMS)
    launcher = subprocess.Popen([sys.executable, str(REPO_ROOT / "stages" / "train.py")], cwd=folder,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=stage_environment())
    deadline = time.monotonic() + 120
    ranks = {}
    while 1 not in ranks and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        ranks = rank_pids(launcher.pid)
    state = folder / "models" / "resume" / "state.pt"
    while not state.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert launcher.poll() is None, "the run ended before rank 1 could be killed"
    os.kill(ranks[1], signal.SIGKILL)
    stdout, stderr = launcher.communicate(timeout=120)
    next_epoch = torch.load(state, weights_only=True)["next_epoch"]
    return folder, launcher.returncode, stdout, stderr, next_epoch


@pytest.mark.slow
def test_killing_one_rank_stops_the_run_with_one_line_and_keeps_the_last_epoch(killed_run):
    folder, returncode, stdout, stderr, next_epoch = killed_run
    assert "launching 2 processes" in stdout  # train.devices: 2, the stage's own launch
    assert returncode == 1
    errors = [line for line in stderr.splitlines() if line.strip()]
    assert len(errors) == 1, stderr
    assert errors[0].startswith("error: rank 1 (pid ") and "was killed by SIGKILL" in errors[0]
    assert "run the train stage again to continue" in errors[0]
    assert 1 <= next_epoch < KILL_PARAMS["epochs"]
    assert not (folder / "models" / "model.pt").exists()


@pytest.mark.slow
def test_after_a_kill_the_rerun_ends_like_an_uninterrupted_run_on_the_same_processes(killed_run, tmp_path):
    import shutil


    killed, *_ = killed_run
    resumed = tmp_path / "resumed"
    shutil.copytree(killed, resumed)
    again = run_stage(resumed)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr
    whole = tmp_path / "whole"
    whole.mkdir()
    write_stage_inputs(whole, **KILL_PARAMS)
    uninterrupted = run_stage(whole)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    for name in ["metrics.json", "plots/metrics/train/loss.tsv", "plots/metrics/val/accuracy.tsv"]:
        assert ((resumed / "metrics" / "train" / name).read_bytes()
                == (whole / "metrics" / "train" / name).read_bytes()), name
    ours = torch.load(resumed / "models" / "model.pt", weights_only=True)["state_dict"]
    theirs = torch.load(whole / "models" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_rank_with_one_line(tmp_path):
    """What `dvc queue kill` or a scheduler sends: torchrun stops the ranks, the stage
    says so once and exits 128 + 15; no rank is left running."""

    write_stage_inputs(tmp_path, **KILL_PARAMS)
    launcher = subprocess.Popen([sys.executable, str(REPO_ROOT / "stages" / "train.py")], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=stage_environment())
    state = tmp_path / "models" / "resume" / "state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    ranks = rank_pids(launcher.pid)
    assert launcher.poll() is None and len(ranks) == 2, "the run ended before it could be stopped"
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 128 + signal.SIGTERM
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: training stopped by SIGTERM"), stderr
    for pid in ranks.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert torch.load(state, weights_only=True)["next_epoch"] >= 1


@pytest.mark.slow
def test_a_state_saved_by_two_processes_resumes_in_one(killed_run, tmp_path):
    import shutil

    killed, _, _, _, next_epoch = killed_run
    folder = tmp_path / "one"
    shutil.copytree(killed, folder)
    set_param(folder, "devices", 1)
    finished = run_stage(folder)
    assert finished.returncode == 0, finished.stderr
    assert f"resuming from models/resume/state.pt at epoch {next_epoch + 1}" in finished.stderr
    assert "launching" not in finished.stdout  # one process, no launch
    logged = (folder / "metrics" / "train" / "plots" / "metrics" / "train" / "loss.tsv").read_text()
    assert len(logged.splitlines()) == 1 + KILL_PARAMS["epochs"]
    assert json.loads((folder / "metrics" / "train" / "metrics.json").read_text())["val"]["accuracy"] > 0.6


# ---------------------------------------------------------------- the queue across GPUs

STAND_IN = "stand-in-training"  # in the command line of the queued experiments' stage


def processes_under(folder: Path) -> dict[int, tuple[str, str]]:
    """pid -> (command line, CUDA_VISIBLE_DEVICES) of the processes working in `folder`."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or not Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = dict(item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0")
                           if b"=" in item)
        except OSError:
            continue
        found[int(entry.name)] = (command, environ.get(b"CUDA_VISIBLE_DEVICES", b"").decode())
    return found


@pytest.mark.slow
def test_queue_script_runs_each_queued_experiment_on_its_own_gpu(tmp_path):
    """scripts/queue_on_gpus.sh on a machine without GPUs: two queued experiments run side
    by side, one under CUDA_VISIBLE_DEVICES=0 and the other under 1 (what a stage
    training on `cuda` then sees as its one GPU)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    (tmp_path / "dvc.yaml").write_text(
        f"stages:\n  train:\n    cmd: python -c 'import time; time.sleep(300)' {STAND_IN}\n"
        "    params:\n      - lr\n")
    (tmp_path / "params.yaml").write_text("lr: 0.1\n")
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "init"], ["dvc", "exp", "run", "--queue", "-S", "lr=0.2"],
                    ["dvc", "exp", "run", "--queue", "-S", "lr=0.4"]):
        subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    log = tmp_path / "started.txt"
    try:
        with open(log, "w") as out:  # a file, not a pipe: the workers outlive the script
            started = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "queue_on_gpus.sh"), "0", "1"],
                                     cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=180)
        assert started.returncode == 0, log.read_text()
        assert log.read_text().splitlines() == ["queue worker 1: CUDA_VISIBLE_DEVICES=0",
                                                "queue worker 2: CUDA_VISIBLE_DEVICES=1"]
        deadline, running = time.monotonic() + 90, []
        while len(running) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            running = [gpu for command, gpu in processes_under(tmp_path).values()
                       if command.startswith("python -c") and STAND_IN in command]
        assert sorted(running) == ["0", "1"]
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=tmp_path, env=env, capture_output=True,
                       timeout=120)
        for pid in processes_under(tmp_path):  # what this test started and is still there
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
