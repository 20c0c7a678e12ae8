"""Know the cost before paying it: cnnspec/training/progress.py's lines, and the loop printing them."""
import numpy as np
import torch

from cnnspec.models.compiler import build_model
from cnnspec.pipeline.params import load_params
from cnnspec.training import progress


def clock_lines(device, per_step, steps_per_epoch=100, epochs=10, early_stopping=False):
    lines = []
    clock = progress.CostClock(lines.append, torch.device(device), epochs, 0, steps_per_epoch, 32, 3200,
                           early_stopping)
    clock.report(per_step)
    return lines


def test_first_line_names_device_steps_and_images():
    line = clock_lines("cpu", 0.01)[0]
    assert line == "training on cpu: 10 epochs x 100 steps of 32 images (3,200 training images)"  # as 60,000 elsewhere


def test_first_line_counts_one_step_and_one_image_as_one():
    lines = []
    progress.CostClock(lines.append, torch.device("cpu"), 1, 0, 1, 1, 2, False)  # 1 dropped
    assert lines == ["training on cpu: 1 epoch x 1 step of 1 image (2 training images)"]


def test_the_estimate_of_one_epoch_left_gives_its_time_once():
    lines = clock_lines("cpu", 0.039, steps_per_epoch=918, epochs=1)
    assert lines[1] == "estimate: 36 s for the run (39 ms per step)"


def test_a_long_cpu_run_says_so_and_names_a_cpu_sized_run():
    lines = clock_lines("cpu", 0.5)  # 1000 steps x 0.5 s = 8 min
    assert lines[1].startswith("estimate: 8 min for the run, 50 s per epoch (500 ms per step)")
    assert "long run for a CPU" in lines[2] and "specs/simcnn.yaml" in lines[2]


def test_the_advice_for_ones_own_images_is_their_size_then_fewer_epochs():
    """Not CIFAR's simcnn: for a folder or csv dataset the image size is the first lever."""
    lines = []
    clock = progress.CostClock(lines.append, torch.device("cpu"), 10, 0, 100, 32, 3200, False,
                               advice=progress.cpu_sized_run(True, [3, 96, 64]))
    clock.report(0.5)
    assert lines[2].endswith("a CPU-sized run: dvc exp run -S 'data.image_size=[48,32]' (smaller images, about "
                             "25% of the arithmetic of 96x64), or dvc exp run -S train.epochs=N (fewer epochs)")
    assert progress.cpu_sized_run(True, [1, 28, 28]) == "dvc exp run -S train.epochs=N (fewer epochs)"
    assert progress.cpu_sized_run(False, [3, 96, 96]) == progress.CPU_SIZED_RUN


def test_a_short_run_or_a_gpu_run_gets_no_advice():
    assert len(clock_lines("cpu", 0.01)) == 2
    assert len(clock_lines("cuda", 0.5)) == 2  # long, but not on a CPU
    assert "at most (early stopping" in clock_lines("cpu", 0.01, early_stopping=True)[1]


def test_slow_steps_get_their_estimate_after_the_second_step():
    """One step an epoch of 12 s: the estimate comes after the first timed step, not after
    five epochs of silence."""
    lines, clock_time = [], iter([0.0, 12.0, 12.0])
    clock = progress.CostClock(lines.append, torch.device("cpu"), 10, 0, 1, 1024, 1024, False)
    clock.step_done(now=lambda: next(clock_time))
    assert len(lines) == 1
    clock.step_done(now=lambda: next(clock_time))
    assert lines[1].startswith("estimate: ") and "(12000 ms per step)" in lines[1]
    clock.step_done(now=lambda: 99.0)
    assert len(lines) == 2  # once


def test_fast_steps_get_their_estimate_after_five_timed_steps():
    lines = []
    clock = progress.CostClock(lines.append, torch.device("cpu"), 1, 0, 100, 32, 3200, False)
    for step in range(6):
        clock.step_done(now=lambda step=step: step * 0.01)
        assert len(lines) == (2 if step == 5 else 1)


def test_the_training_loop_prints_both_lines(capsys, tmp_path):
    """Through cnnspec.training.loop.train, non-interactive (pytest captures stderr)."""
    from cnnspec.training.loop import train

    params = load_params(write_params(tmp_path), ["train"])["train"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(256, 1, 8, 8), dtype=np.uint8)
    labels = np.arange(256, dtype=np.int64) % 2
    data = {"train_images": images, "train_labels": labels, "val_images": images[:16],
            "val_labels": labels[:16], "test_images": images[:0], "test_labels": labels[:0],
            "meta": {"classes": ["a", "b"], "input_shape": [1, 8, 8], "mean": [0.5], "std": [0.25]}}
    model = build_model(_spec(tmp_path), (1, 8, 8), 2)
    train(model, data, params, "cpu")
    out = capsys.readouterr().out
    assert "training on cpu: 1 epoch x 16 steps of 16 images (256 training images)" in out
    assert "estimate: " in out and "ms per step" in out


def write_params(folder):
    path = folder / "params.yaml"
    path.write_text("recipe: keras_adam\ntrain: {device: cpu, epochs: 1, batch_size: 16}\n")
    return path


def _spec(folder):
    path = folder / "tiny.yaml"
    path.write_text("name: tiny\nlayers: [flatten, {dense: num_classes}]\n")
    return path


def test_a_long_run_of_the_cpu_sized_spec_itself_is_told_to_train_fewer_epochs():
    """Advising `-S model.spec=specs/simcnn.yaml` to someone already training it says nothing."""
    from pathlib import Path

    model = build_model(Path(__file__).resolve().parent.parent / "specs" / "simcnn.yaml", (1, 28, 28), 10)
    assert model.spec_name == progress.CPU_SIZED_SPEC
    assert progress.cpu_sized_run(False, [1, 28, 28], model.spec_name) == "dvc exp run -S train.epochs=N (fewer epochs)"
    assert progress.cpu_sized_run(False, [1, 28, 28], "speedrun94") == progress.CPU_SIZED_RUN
