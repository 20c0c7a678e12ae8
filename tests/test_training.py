"""The training loop end to end on tiny data (3 classes, 8x8 images): logging, options,
determinism, resume after SIGKILL and Ctrl-C, divergence, out-of-memory, the stage."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnspec
from cnnspec.errors import TrainingError
from cnnspec.models.checkpoint import load_network
from cnnspec.training.loop import read_resume_state, run_fingerprint, train
from cnnspec.training.stops import TrainingInterrupted
from tests.tinytraining import (
    CLASSES,
    SPEC,
    Sabotage,
    run_training,
    tiny_data,
    tiny_model,
    train_params,
    write_stage_inputs,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def weights(model) -> dict:
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_logs_every_epoch_with_dvclive_and_learns(tmp_path):
    result = run_training(train_params(epochs=4), tmp_path)
    assert len(result.history) == 4
    summary = json.loads((tmp_path / "log" / "metrics.json").read_text())
    assert summary["step"] == 3
    assert summary["val"]["accuracy"] == result.history[-1]["val/accuracy"]
    rows = (tmp_path / "log" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in rows[1:]] == ["0", "1", "2", "3"]
    for name in ["lr.tsv", "val/accuracy.tsv", "val/loss.tsv", "train/accuracy.tsv"]:
        assert (tmp_path / "log" / "plots" / "metrics" / name).is_file()
    assert result.history[-1]["val/accuracy"] > 0.6  # chance is 1/3
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]
    assert not result.model.training


def test_steps_within_an_epoch_are_plain_lines_on_stderr_in_a_log(capsys, monkeypatch):
    # a CPU epoch can take many minutes: a CI log hears how far it is between epoch lines
    monkeypatch.setattr("cnnspec.progress.LINE_EVERY_S", 0)
    monkeypatch.setattr("cnnspec.progress.LINE_EVERY_MAX_S", 0)  # a line at every update
    run_training(train_params(epochs=2))  # 48 images, batch 16: 3 steps an epoch
    captured = capsys.readouterr()
    assert [line.split(" (")[0] for line in captured.err.splitlines()] == [
        f"epoch {epoch}/2: {step}/3 steps" for epoch in (1, 2) for step in (1, 2, 3)]
    assert "\r" not in captured.err and "\x1b" not in captured.err
    assert [line.split("  ")[0] for line in captured.out.splitlines() if line.startswith("epoch")] == \
        ["epoch 1/2", "epoch 2/2"]


def test_dvclive_opens_in_a_thread_beside_the_first_steps(tmp_path, monkeypatch):
    import dvclive

    real_live, opened_on_main_thread = dvclive.Live, []

    def recording_live(*args, **kwargs):
        opened_on_main_thread.append(threading.current_thread() is threading.main_thread())
        return real_live(*args, **kwargs)

    monkeypatch.setattr(dvclive, "Live", recording_live)
    run_training(train_params(epochs=2), tmp_path)
    assert opened_on_main_thread == [False]
    assert json.loads((tmp_path / "log" / "metrics.json").read_text())["step"] == 1


@pytest.fixture
def unopenable_dvclive(monkeypatch):
    import dvclive

    def unopenable_live(*args, **kwargs):
        raise PermissionError("metrics/train: read-only file system")

    monkeypatch.setattr(dvclive, "Live", unopenable_live)


def test_a_dvclive_that_cannot_open_stops_the_run_after_its_first_epoch_is_saved(tmp_path, unopenable_dvclive):
    with pytest.raises(PermissionError, match="read-only"):
        run_training(train_params(epochs=3), tmp_path)
    assert read_resume_state(tmp_path / "resume" / "state.pt", "f")["next_epoch"] == 1


def test_a_run_ending_with_its_own_error_reports_it_and_not_dvclive_s(tmp_path, unopenable_dvclive):
    model = Sabotage(tiny_model(), at_call=2, action=lambda out: out * float("nan"))  # epoch 1
    with pytest.raises(TrainingError, match="epoch 1, step 2"):
        run_training(train_params(epochs=2), tmp_path, model=model)


def test_a_run_ending_as_another_removes_dvclive_s_shared_signal_file_still_ends(tmp_path, monkeypatch):
    """DVCLive's signal file for VS Code sits in the repository root, one for every run
    there: here another run removes it between this run's check and its removal."""
    import types

    import dvclive.vscode

    def removed_by_another_run_first(path):
        os.remove(path)
        os.remove(path)

    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repository"))
    racing_os = types.SimpleNamespace(**{**vars(os), "remove": removed_by_another_run_first})
    monkeypatch.setattr(dvclive.vscode, "os", racing_os)
    result = run_training(train_params(epochs=2), tmp_path)
    assert len(result.history) == 2
    assert json.loads((tmp_path / "log" / "metrics.json").read_text())["step"] == 1


def test_two_cpu_runs_give_byte_identical_metrics(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    run_a = run_training(train_params(), first)
    run_b = run_training(train_params(), second)
    for name in ["metrics.json", "plots/metrics/train/loss.tsv", "plots/metrics/val/accuracy.tsv"]:
        assert (first / "log" / name).read_bytes() == (second / "log" / name).read_bytes()
    for key, value in weights(run_a.model).items():
        assert torch.equal(value, run_b.model.state_dict()[key])
    other_seed = run_training(train_params(seed=1))
    assert other_seed.history != run_a.history


OPTION_CHANGES = {
    "adam": {"optimizer": {"name": "adam", "lr": 0.01}},
    "rmsprop": {"optimizer": {"name": "rmsprop", "lr": 0.01}},
    "cosine": {"scheduler": {"name": "cosine"}},
    "plateau": {"scheduler": {"name": "plateau"}},
    "focal": {"loss": {"name": "focal"}},
    "no_label_smoothing": {"loss": {"label_smoothing": 0.0}},
    "balanced_weights": {"class_weights": {"mode": "none", "multipliers": {"cat": 3.0}}},
    "hflip_instead_of_alternating": {"augment": {"alternating_flip": False, "hflip": True}},
    "no_translate": {"augment": {"translate": 0}},
    "cutout": {"augment": {"cutout": 3}},
    "crop": {"augment": {"crop_padding": 2}},
    "vflip": {"augment": {"vflip": True}},
    "no_lookahead": {"lookahead": {"enabled": False}},
    "ema": {"ema": {"enabled": True, "decay": 0.5}},
    "batch_size": {"batch_size": 8},
}


@pytest.mark.parametrize("name", OPTION_CHANGES)
def test_each_option_changes_the_trained_weights(name):
    reference = weights(run_training(train_params(epochs=2)).model)
    changed = run_training(train_params(epochs=2, **OPTION_CHANGES[name])).model.state_dict()
    assert any(not torch.equal(reference[key], changed[key]) for key in reference)


def test_ema_weights_are_the_ones_returned():
    params = train_params(epochs=2, ema={"enabled": True, "decay": 0.9}, lookahead={"enabled": False})
    model = tiny_model()
    result = run_training(params, model=model)
    assert result.model is model
    no_ema = run_training(train_params(epochs=2, lookahead={"enabled": False}))
    # EMA at 0.9 over 6 steps stays close to the initial weights; plain training moves further
    key = [k for k in model.state_dict() if k.endswith("weight") and model.state_dict()[k].dim() == 2][0]
    start = tiny_model().state_dict()[key]
    assert (result.model.state_dict()[key] - start).norm() < (no_ema.model.state_dict()[key] - start).norm()


def test_early_stopping_ends_the_run_and_restores_the_best_epoch():
    params = train_params(epochs=6, early_stopping={"enabled": True, "patience": 1, "min_delta": 100.0})
    result = run_training(params)
    assert len(result.history) == 2  # epoch 1 set the best; epoch 2 could not beat it by 100
    assert result.stopped_early and result.best_epoch == 0
    # the stage's last line gives the accuracy of the weights it saves, and says why it stopped
    from stages import train as train_stage

    last = result.history[1]["val/accuracy"]
    assert train_stage.best_epoch_note(result, "val") == (
        f" (epoch 1's weights, kept by restore_best, not epoch 2's: {last:.4f})")
    assert train_stage.early_stop_note(result, params) == "; stopped early: val_loss not better for 1 epoch"
    # patience 0 stops at the first epoch that is not better, as patience 1 does (Keras' rule)
    at_once = train_params(epochs=6, early_stopping={"enabled": True, "patience": 0, "min_delta": 100.0})
    stopped = run_training(at_once)
    assert len(stopped.history) == 2
    assert train_stage.early_stop_note(stopped, at_once) == "; stopped early: val_loss not better for 1 epoch"


def test_cuda_paths_bf16_autocast_and_channels_last_run_on_cpu(cuda_paths_on_cpu):
    fp32 = run_training(train_params(epochs=2, precision="off", channels_last=False))
    bf16 = run_training(train_params(epochs=2, precision="bf16", channels_last=True))
    assert bf16.history != fp32.history  # autocast really ran
    assert bf16.history[-1]["train/loss"] == pytest.approx(fp32.history[-1]["train/loss"], rel=0.1)
    assert all(np.isfinite(record["train/loss"]) for record in bf16.history)


def test_cpu_bf16_autocasts_where_the_cpu_has_bf16_and_repeats_exactly(monkeypatch, capsys):
    from cnnspec.training import device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    fp32 = run_training(train_params(epochs=2, cpu_precision="off"))
    bf16 = run_training(train_params(epochs=2, cpu_precision="bf16"))
    again = run_training(train_params(epochs=2, cpu_precision="bf16"))
    assert "training on cpu in bf16:" in capsys.readouterr().out
    assert bf16.history != fp32.history  # autocast really ran
    assert bf16.history == again.history  # same seed, same metrics
    assert bf16.history[-1]["train/loss"] == pytest.approx(fp32.history[-1]["train/loss"], rel=0.1)


def test_cpu_bf16_without_bf16_instructions_trains_in_fp32_and_says_so(monkeypatch, capsys):
    from cnnspec.training import device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    asked = run_training(train_params(epochs=1, cpu_precision="bf16"))
    out = capsys.readouterr().out
    assert "note: train.cpu_precision is bf16, but this CPU has no bf16 instructions" in out
    assert "training on cpu:" in out
    assert asked.history == run_training(train_params(epochs=1, cpu_precision="off")).history


@pytest.mark.slow
def test_compiled_training_matches_the_uncompiled_loss():
    plain = run_training(train_params(epochs=1))
    compiled = run_training(train_params(epochs=1, compile=True))
    assert compiled.first_step_seconds > 0
    # the same arithmetic reassociated (inductor's fused kernels; channels-last convolutions,
    # on CPU too) drifts the mean training loss of an epoch by a few 1e-3
    assert compiled.history[0]["train/loss"] == pytest.approx(plain.history[0]["train/loss"], rel=5e-3)
    assert compiled.history[0]["val/loss"] == pytest.approx(plain.history[0]["val/loss"], rel=1e-3)


def test_nan_loss_stops_with_one_line_naming_epoch_and_step_and_keeps_the_last_state(tmp_path):
    model = Sabotage(tiny_model(), at_call=5, action=lambda out: out * float("nan"))  # epoch 2, step 2
    with pytest.raises(TrainingError) as caught:
        run_training(train_params(epochs=3), tmp_path, model=model)
    message = str(caught.value)
    assert "epoch 2, step 2" in message and "lr" in message and "\n" not in message
    assert "precision" not in message  # fp32: no precision to turn off
    state = torch.load(tmp_path / "resume" / "state.pt", weights_only=True)
    assert state["next_epoch"] == 1  # epoch 1's state, not the diverged one
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())


def test_a_nan_loss_in_bf16_names_the_key_that_turned_bf16_on(monkeypatch):
    from cnnspec.training import device as device_module

    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: True)  # as on a CPU with bf16 instructions
    model = Sabotage(tiny_model(), at_call=2, action=lambda out: out * float("nan"))
    with pytest.raises(TrainingError, match=r"lower train.optimizer.lr, set train.cpu_precision: off, or add l2"):
        run_training(train_params(epochs=2, cpu_precision="bf16"), model=model)


def test_out_of_memory_names_the_batch_size():
    def out_of_memory(out):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(TrainingError) as caught:
        run_training(train_params(), model=Sabotage(tiny_model(), 2, out_of_memory))
    assert "batch_size 16" in str(caught.value) and "batch_size 8" in str(caught.value)


def test_out_of_memory_while_setting_up_is_one_line_naming_the_model(monkeypatch):
    """Before the first step (the data, the model and its copies moving to the GPU) an
    out-of-memory is not the batch size's fault, and says so."""
    def no_room(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    from cnnspec.training import loop

    monkeypatch.setattr(loop, "DeviceData", no_room)
    model = tiny_model()
    with pytest.raises(TrainingError) as caught:
        run_training(train_params(), model=model)
    message = str(caught.value)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    assert message.startswith("CUDA out of memory while setting up training")
    assert f"{parameters:,} parameters" in message and "batch_size" not in message and "\n" not in message


def press_ctrl_c(out):
    os.kill(os.getpid(), signal.SIGINT)
    return out


def test_ctrl_c_saves_mid_epoch_and_the_rerun_ends_exactly_like_an_uninterrupted_run(tmp_path):
    params = train_params(epochs=3)
    reference = run_training(params, tmp_path / "reference")
    with pytest.raises(TrainingInterrupted) as caught:  # epoch 2, step 2 of 3
        run_training(params, tmp_path / "run", model=Sabotage(tiny_model(), 5, press_ctrl_c))
    assert "epoch 2, step 2" in str(caught.value) and caught.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored (conftest sets it)
    resumed = run_training(params, tmp_path / "run")
    assert resumed.resumed_from_epoch == 1
    assert resumed.history == reference.history
    for key, value in weights(reference.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for name in ["metrics.json", "plots/metrics/train/loss.tsv", "plots/metrics/lr.tsv"]:
        assert ((tmp_path / "run" / "log" / name).read_bytes()
                == (tmp_path / "reference" / "log" / name).read_bytes())


def test_a_ctrl_c_the_run_was_started_ignoring_does_not_stop_it(tmp_path):
    """`dvc repro &` from a script: the shell starts it with Ctrl-C ignored, so that a
    Ctrl-C meant for the foreground job leaves it alone; SIGTERM still stops it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = run_training(train_params(epochs=2), tmp_path / "run", model=Sabotage(tiny_model(), 2, press_ctrl_c))
        assert len(result.history) == 2 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_saves_like_ctrl_c_and_exits_143(tmp_path):
    def send_sigterm(out):
        os.kill(os.getpid(), signal.SIGTERM)
        return out

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as caught:  # epoch 1, step 2 of 3
        run_training(train_params(epochs=2), tmp_path, model=Sabotage(tiny_model(), 2, send_sigterm))
    assert "SIGTERM" in str(caught.value) and "epoch 1, step 2" in str(caught.value)
    assert caught.value.exit_code == 143 and signal.getsignal(signal.SIGTERM) is before
    state = torch.load(tmp_path / "resume" / "state.pt", weights_only=True)
    assert state["next_epoch"] == 0 and state["progress"]["step"] == 2
    assert torch.isfinite(state["progress"]["losses"][:2]).all() and state["progress"]["losses"][2] == 0


def test_a_resume_state_for_other_params_is_ignored(tmp_path, capsys):
    run_training(train_params(epochs=2), tmp_path)  # leaves its state behind (the stage deletes it)
    fresh = train(tiny_model(), tiny_data(), train_params(epochs=2), "cpu",
                  resume_path=tmp_path / "resume" / "state.pt", fingerprint="other")
    assert fresh.resumed_from_epoch == 0 and len(fresh.history) == 2
    assert "saved for other params" in capsys.readouterr().err


KILLED_RUN = """
import os, signal, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from tests.tinytraining import Sabotage, run_training, tiny_model, train_params
from pathlib import Path
kill_at = int(sys.argv[2])
model = tiny_model()
if kill_at:
    model = Sabotage(model, kill_at, lambda out: os.kill(os.getpid(), signal.SIGKILL))
result = run_training(train_params(epochs=3), Path(sys.argv[1]), model=model)
torch.save(result.model.state_dict(), Path(sys.argv[1]) / "final.pt")
"""


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN.format(root=str(REPO_ROOT)))

    def launch(folder, kill_at):
        return subprocess.run([sys.executable, str(script), str(folder), str(kill_at)],
                              capture_output=True, text=True, timeout=120)

    uninterrupted = launch(tmp_path / "whole", 0)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    killed = launch(tmp_path / "killed", 5)  # epoch 2, step 2 of 3
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "killed" / "resume" / "state.pt", weights_only=True)["next_epoch"] == 1
    resumed = launch(tmp_path / "killed", 0)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    for name in ["log/metrics.json", "log/plots/metrics/train/loss.tsv", "log/plots/metrics/val/loss.tsv"]:
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    whole = torch.load(tmp_path / "whole" / "final.pt", weights_only=True)
    again = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    assert all(torch.equal(whole[key], again[key]) for key in whole)


def test_stage_writes_a_loadable_model_and_metrics_and_removes_its_resume_state(tmp_path, monkeypatch):
    from stages import train as stage

    write_stage_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = stage.run()
    model, checkpoint = load_network(tmp_path / "models" / "model.pt")
    assert checkpoint["classes"] == CLASSES and checkpoint["params"]["train"]["epochs"] == 2
    assert checkpoint["epoch"] == 1 and checkpoint["spec_text"] == SPEC
    images = torch.randn(3, 3, 8, 8)
    assert torch.equal(model(images), result.model(images))
    assert json.loads((tmp_path / "metrics" / "train" / "metrics.json").read_text())["step"] == 1
    assert not (tmp_path / "models" / "resume" / "state.pt").exists()
    fingerprint = run_fingerprint(checkpoint["params"], SPEC, json.loads(
        (tmp_path / "data" / "prepared" / "meta.json").read_text()))
    assert len(fingerprint) == 64


def test_stage_reports_a_bad_param_in_one_line_and_writes_nothing(tmp_path):
    write_stage_inputs(tmp_path, batch_size=0)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    finished = subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "train.py")], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, env=env)
    assert finished.returncode == 2
    assert finished.stderr.strip().count("\n") == 0 and "train.batch_size" in finished.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


def test_whitening_init_gets_the_first_training_images_normalized_once(tmp_path):
    model, seen = tiny_model(), []
    original = model.init_from_data
    model.init_from_data = lambda images: seen.append(images.clone()) or original(images)
    run_training(train_params(epochs=1), tmp_path, model=model)
    data = tiny_data()
    expected = (torch.from_numpy(data["train_images"]).float() / 255 - 0.5) / 0.3
    assert len(seen) == 1 and torch.allclose(seen[0], expected)
    resumed_model = tiny_model()
    resumed_model.init_from_data = lambda images: seen.append(images)
    resumed = run_training(train_params(epochs=1), tmp_path, model=resumed_model)
    assert resumed.resumed_from_epoch == 1
    assert len(seen) == 1  # a resumed run keeps the saved (whitened) weights


def without_validation(data: dict) -> dict:
    """Prepared data as data.val_split: 0 leaves it: empty validation arrays."""
    return {**data, "val_images": data["val_images"][:0], "val_labels": data["val_labels"][:0],
            "meta": {**data["meta"], "counts": {**data["meta"]["counts"], "val": 0}}}


def test_without_a_validation_split_trains_on_everything_and_logs_training_only(tmp_path):
    result = train(tiny_model(), without_validation(tiny_data()), train_params(epochs=2), "cpu",
                   log_dir=tmp_path / "log")
    assert [sorted(record) for record in result.history] == [["lr", "train/accuracy", "train/loss"]] * 2
    logged = tmp_path / "log" / "plots" / "metrics"
    assert (logged / "train" / "loss.tsv").is_file() and not (logged / "val").exists()
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]


@pytest.mark.parametrize("options, key", [
    ({"early_stopping": {"enabled": True}}, "train.early_stopping.enabled"),
    ({"scheduler": {"name": "plateau"}}, "train.scheduler.name: plateau"),
])
def test_what_watches_validation_needs_a_validation_split(options, key, tmp_path):
    from cnnspec.errors import ParamsError
    with pytest.raises(ParamsError, match=f"{key}.*needs a validation split.*data.val_split"):
        train(tiny_model(), without_validation(tiny_data()), train_params(**options), "cpu",
              resume_path=tmp_path / "resume" / "state.pt", log_dir=tmp_path / "log")
    assert not (tmp_path / "resume").exists() and not (tmp_path / "log").exists()


WHITEN_SPEC = """name: tiny_whiten
layers:
  - whiten: {kernel: 2, bias_epochs: 1}
  - activation: gelu
  - global_avg_pool
  - dense: {units: num_classes}
"""


def whiten_bias_after(epochs: int, spec: str = WHITEN_SPEC) -> torch.Tensor:
    torch.manual_seed(0)
    model = cnnspec.build_model(cnnspec.parse_spec(spec, "tiny_whiten.yaml"), (3, 8, 8), 3)
    params = train_params(epochs=epochs, lookahead={"enabled": False},
                          scheduler={"name": "none"}, optimizer={"weight_decay": 0.01})
    train(model, tiny_data(), params, "cpu")
    return model.layers.whiten_1.bias.detach().clone()


def test_whitening_bias_trains_only_for_its_bias_epochs():
    """airbench: the whitening conv's bias learns in the first epochs, then stays put
    (no gradient step and no weight decay)."""
    after_one, after_three = whiten_bias_after(1), whiten_bias_after(3)
    assert after_one.abs().sum() > 0
    assert torch.equal(after_one, after_three)
    unlimited = WHITEN_SPEC.replace(", bias_epochs: 1", "")
    assert not torch.equal(whiten_bias_after(1, unlimited), whiten_bias_after(3, unlimited))


@pytest.mark.slow
def test_freezing_the_whitening_bias_does_not_recompile(tmp_path):
    torch.manual_seed(0)
    model = cnnspec.build_model(cnnspec.parse_spec(WHITEN_SPEC, "tiny_whiten.yaml"), (3, 8, 8), 3)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        result = train(model, tiny_data(), train_params(epochs=2, compile=True), "cpu")
    assert len(result.history) == 2


def test_deterministic_mode_is_on_while_training_and_restored_after():
    during = []
    model = Sabotage(tiny_model(), 1, lambda out: during.append(torch.are_deterministic_algorithms_enabled()) or out)
    run_training(train_params(epochs=1, deterministic=True), model=model)
    assert during == [True]
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_base_checkpoint_replaced_under_the_same_name_does_not_resume_the_old_run(tmp_path):
    from stages.train import starting_files

    base = tmp_path / "base.pt"
    base.write_bytes(b"the first base")
    params = {"train": {"init_from": str(base)}, "model": {"weights": ""}}
    assert starting_files(params) == [str(base)]
    assert starting_files({"train": {"init_from": ""}, "model": {"weights": "ResNet50_Weights.IMAGENET1K_V2"}}) == []
    before = run_fingerprint(params, SPEC, {"classes": CLASSES}, starting_files(params))
    assert run_fingerprint(params, SPEC, {"classes": CLASSES}, starting_files(params)) == before
    base.write_bytes(b"another base, same name")
    assert run_fingerprint(params, SPEC, {"classes": CLASSES}, starting_files(params)) != before


@pytest.mark.parametrize("damage, words", [
    (lambda state: state.update(next_epoch=10**6), "next_epoch 1000000 is not an epoch of this run (0 to 3)"),
    (lambda state: state.update(next_epoch=-3), "next_epoch -3 is not an epoch"),
    (lambda state: state.update(history=7), "history is not a list of epoch records"),
    (lambda state: state["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)), "rng.torch is not a random"),
    (lambda state: state["model"].popitem(), "its model's tensors are not this model's"),
    (lambda state: next(v for v in state["model"].values() if v.is_floating_point()).fill_(float("nan")),
     "holds NaN or infinite values"),
    # the progress of the epoch the stop cut short: its fields, lengths and indices
    (lambda state: state.update(progress={"step": 0}), "progress lacks lr, order, losses, correct"),
    (lambda state: state["progress"]["order"].__setitem__(-1, 10**6), "progress.order holds an index outside"),
    (lambda state: state["progress"].update(order=state["progress"]["order"][:5]), "progress.order is not an order"),
    (lambda state: state["progress"].update(losses=torch.zeros(1)), "progress.losses is not one loss for each"),
    (lambda state: state["progress"].update(step="2"), "progress.step '2' is not a step of the epoch"),
    (lambda state: state["progress"].update(correct=3.5), "progress.correct is not a count"),
], ids=["epoch-huge", "epoch-negative", "history", "rng", "model-keys", "model-nan", "progress-keys",
        "progress-index", "progress-order-length", "progress-losses", "progress-step", "progress-correct"])
def test_a_resume_state_edited_by_hand_is_set_aside_in_one_line(tmp_path, damage, words):
    params = train_params(epochs=3)
    with pytest.raises(TrainingInterrupted):  # leaves a real state: epoch 2, step 2 of 3
        run_training(params, tmp_path / "run", model=Sabotage(tiny_model(), 5, press_ctrl_c))
    path = tmp_path / "run" / "resume" / "state.pt"
    state = torch.load(path, weights_only=True)
    damage(state)
    torch.save(state, path)
    with pytest.raises(TrainingError) as caught:
        run_training(params, tmp_path / "run")
    message = str(caught.value)
    assert message.startswith(f"{path}: a damaged resume state (") and words in message, message
    assert "run the train stage again to start over" in message and "\n" not in message
    assert not path.exists() and list(path.parent.glob("state.pt.damaged*"))
    assert len(run_training(params, tmp_path / "run").history) == 3  # and the next run starts over


def test_a_damaged_dvclive_summary_when_resuming_is_one_line_naming_it(tmp_path):
    params = train_params(epochs=3)
    with pytest.raises(TrainingInterrupted):  # a resume state at epoch 2, and the log of epoch 1
        run_training(params, tmp_path / "run", model=Sabotage(tiny_model(), 5, press_ctrl_c))
    summary = tmp_path / "run" / "log" / "metrics.json"
    summary.write_text('{"step": 3, "train": ')
    with pytest.raises(TrainingError) as caught:
        run_training(params, tmp_path / "run")
    assert str(caught.value).startswith(f"{summary}: damaged (not DVCLive's JSON summary); remove ")
    shutil.rmtree(tmp_path / "run" / "log")  # what the message says to do: the run resumes
    resumed = run_training(params, tmp_path / "run")
    assert resumed.resumed_from_epoch == 1 and json.loads(summary.read_text())["step"] == 2
