"""The benchmark scripts measure what they claim: FLOP counts against hand counts, the
MFU formula, a bare loop that does the same training as the real one, the reading of a
time-to-accuracy ladder, and each script's small CPU mode printing its figures.
Timings are printed by the scripts, never asserted here."""
import gzip
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import bench_loop_overhead as loop
from benchmarks import fashion_time_to_accuracy as fashion
from benchmarks import gpu_throughput as gpu
from cnnspec.models.compiler import build_model
from tests.fashion import FASHION

TINY_SPEC = """\
name: tiny
input: {channels: 1, height: 28, width: 28}
layers:
  - conv: {filters: 4, kernel: 3, stride: 2}
  - bn
  - activation: relu
  - global_avg_pool
  - dense: num_classes
"""


# ---------------------------------------------------------------- FLOPs and MFU

class ConvThenLinear(nn.Module):
    """1x5x5 -> conv 3x3 (2 filters, no bias) -> 2x3x3 -> flatten 18 -> linear 4 (no bias)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, bias=False)
        self.linear = nn.Linear(18, 4, bias=False)

    def forward(self, x):
        return self.linear(self.conv(x).flatten(1))


def test_training_step_flops_match_a_hand_count():
    # Per image, 2 FLOPs per multiply-add:
    #   conv forward 2*(2*3*3 outputs)*(1*3*3 taps) = 324; its weight gradient the same;
    #   no input gradient for the first layer (the images do not require grad);
    #   linear forward 2*18*4 = 144; weight gradient 144; input gradient 144.
    per_image = 324 + 324 + 144 + 144 + 144
    images, labels = torch.randn(3, 1, 5, 5), torch.tensor([0, 1, 2])
    assert gpu.training_step_flops(ConvThenLinear(), images, labels) == 3 * per_image


def test_flops_per_image_does_not_depend_on_the_batch_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = build_model(loop.ROOT / "specs" / "simcnn.yaml", (3, 32, 32), 10)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert gpu.flops_per_image(model, (3, 32, 32), 10, batch=2) == gpu.flops_per_image(model, (3, 32, 32), 10, batch=5)
    assert all(param.grad is None for param in model.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_training_flops_are_about_three_forwards():
    model = ConvThenLinear()
    images, labels = torch.randn(4, 1, 5, 5), torch.zeros(4, dtype=torch.long)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        model(images)
    forward = counter.get_total_flops()
    step = gpu.training_step_flops(model, images, labels)
    assert 2 * forward < step <= 3 * forward


def test_mfu_is_model_flops_per_second_over_the_peak():
    assert gpu.mfu(790e9, 100.0) == pytest.approx(0.1)  # 79 TFLOP/s of 790
    assert gpu.mfu(1e9, 1000.0, peak=4e12) == pytest.approx(0.25)
    row = gpu.Row("x", False, "bf16", 8, 1.0, 2000.0, 0, 3.95e9, 0.0)
    assert row.mfu == pytest.approx(3.95e9 * 2000.0 / 790e12)


def test_markdown_table_has_one_row_per_configuration():
    rows = [gpu.Row("speedrun94", compile, "bf16", 1024, 0.5, 1e5, 2**30, 7.2e8, 1.0) for compile in (False, True)]
    table = gpu.markdown_table(rows, "cuda: H100").splitlines()
    assert len(table) == 4
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "| speedrun94 | yes | bf16 | 1024 |" in table[3]
    assert "1,024 MiB" in table[2] and "9.11%" in table[2]  # 7.2e8 * 1e5 / 790e12


# ---------------------------------------------------------------- the loop-overhead comparison is fair

def test_bare_loop_trains_the_same_weights_as_the_real_loop():
    """Same init, order and optimizer: the two loops differ only in what surrounds the steps."""
    data = loop.random_prepared(96, 32, seed=1)
    params = loop.loop_params(batch_size=32, epochs=2)
    spec = loop.ROOT / "specs" / "simcnn.yaml"
    real_model = loop.spec_model(spec, loop.CIFAR_SHAPE, 10, params["seed"])
    bare_model = loop.spec_model(spec, loop.CIFAR_SHAPE, 10, params["seed"])
    _, _, real_images = loop.real_loop(real_model, data, params, "cpu")
    _, _, bare_images = loop.bare_loop(bare_model, loop.BareData(data, torch.device("cpu")), params, "cpu")
    assert real_images == bare_images == 2 * 96
    initial = loop.spec_model(spec, loop.CIFAR_SHAPE, 10, params["seed"]).state_dict()
    assert any(not torch.equal(value, initial[name]) for name, value in bare_model.state_dict().items())
    for name, value in bare_model.state_dict().items():
        torch.testing.assert_close(real_model.state_dict()[name], value, rtol=1e-4, atol=1e-5)


def test_the_real_loop_adds_at_most_eleven_operations_per_step():
    """The loop's per-step bookkeeping (gather and normalize the uint8 batch, copy it into
    the channels-last layout, record the loss, count correct predictions) is a handful of
    operations beside the model's step; sums, the divergence check and logging wait for
    the epoch's end. The bare loop holds its images in the model's layout already."""
    operations = loop.operations_per_step(loop.ROOT / "specs" / "simcnn.yaml")
    assert operations["bare"] > 50  # forward, backward and the optimizer were counted
    assert operations["real"] - operations["bare"] <= 11, operations


def test_train_params_overrides_reach_sub_sections():
    params = loop.loop_params(batch_size=16, epochs=3)
    assert (params["batch_size"], params["epochs"]) == (16, 3)
    assert params["scheduler"]["name"] == "none" and not params["lookahead"]["enabled"]
    assert not any(params["augment"][key] for key in ("hflip", "alternating_flip", "translate", "cutout"))
    assert "momentum" in params["optimizer"]  # untouched keys of a section stay


# ---------------------------------------------------------------- reading the time-to-accuracy ladder

RUNS = [fashion.Run(1, 4.0, 0.90), fashion.Run(2, 8.5, 0.925), fashion.Run(4, 16.0, 0.94),
        fashion.Run(8, 33.0, 0.935)]


def test_accuracy_within_a_budget_is_the_best_run_that_fit():
    assert fashion.accuracy_within(RUNS, 15.0) == 0.925
    assert fashion.accuracy_within(RUNS, 60.0) == 0.94  # a longer run that did worse does not count
    assert fashion.accuracy_within(RUNS, 3.0) is None


def test_seconds_to_target_is_the_fastest_run_that_reached_it():
    assert fashion.seconds_to(RUNS, 0.93) == 16.0
    assert fashion.seconds_to(RUNS, 0.95) is None


def test_ladder_stops_before_a_rung_that_cannot_fit():
    assert fashion.next_rung_fits([], 64, 1.0)
    assert fashion.next_rung_fits(RUNS[:1], 16, 60.0)  # 4 s/epoch * 16 = 64 <= 66
    assert not fashion.next_rung_fits(RUNS[:1], 32, 60.0)


# ---------------------------------------------------------------- each script's CPU mode prints its figures

def test_loop_overhead_quick_mode_prints_the_ratio(capsys):
    figures = loop.main(["--quick", "--device", "cpu", "--images", "96", "--batch", "32", "--rounds", "1"])
    out = capsys.readouterr().out
    ratio = re.search(r"median ratio real/bare: whole call ([\d.]+), in loop ([\d.]+)", out)
    assert ratio and float(ratio.group(1)) == pytest.approx(figures["ratio_whole_call"], abs=1e-3)
    assert figures["real_images_per_s"] > 0 and figures["bare_images_per_s"] > 0


def test_gpu_throughput_quick_mode_prints_a_table(capsys, cuda_paths_on_cpu):
    # the script switches the CUDA paths on for the whole process; the fixture switches them back after
    rows = gpu.main(["--quick", "--device", "cpu", "--specs", "simcnn", "--compile", "off",
                     "--precisions", "off", "--images", "192", "--no-ten-epoch"])
    out = capsys.readouterr().out
    assert len(rows) == 1 and rows[0].images_per_second > 0
    line = next(line for line in out.splitlines() if line.startswith("| simcnn |"))
    assert line.startswith("| simcnn | no | off | 64 |")
    assert f"{rows[0].flops_per_image / 1e9:.3f}" in line


def _write_idx(path, array, magic):
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def test_fashion_quick_mode_reads_idx_files_and_prints_the_budgets(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 200), ("t10k", 40)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)), 0x803)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10, 0x801)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    runs = fashion.main(["--device", "cpu", "--data", str(tmp_path), "--spec", str(spec), "--val-split", "0.1",
                         "--budgets", "30", "60", "--epochs", "1", "2", "--batch", "32", "--cpu-precision", "off"])
    out = capsys.readouterr().out
    assert [run.epochs for run in runs] == [1, 2]
    assert all(0.0 <= run.accuracy <= 1.0 and run.seconds > 0 for run in runs)
    assert "180 training / 40 test images" in out
    assert "threads, fp32" in out  # --cpu-precision off: fp32 even where the CPU has bf16
    assert "| 30 s |" in out and "| 60 s |" in out
    assert "| 30 s | 91% |" in out and "seconds to 91% test accuracy:" in out


# ---------------------------------------------------------------- data-parallel scaling

def test_data_parallel_benchmark_reads_the_stage_line_and_counts_images_after_the_first_step():
    from benchmarks import bench_data_parallel as parallel

    single = ("trained 3 epochs on cpu: val accuracy 0.8123; first step 0.21s, "
              "rest 12.50s; wrote models/model.pt")
    several = ("trained 2 epochs on 2 processes (cpu, gloo): val accuracy 0.8000; first step 0.03s "
               "(includes compile), rest 4.00s; wrote models/model.pt")
    assert parallel.STAGE_LINE.search(single).groups() == ("3", "0.21", "12.50")
    assert parallel.STAGE_LINE.search(several).groups() == ("2", "0.03", "4.00")
    # 1,000 images in batches of 100: 10 steps an epoch, 20 in 2 epochs, the first one timed apart
    assert parallel.images_per_second(2, 1000, 100, 4.0) == pytest.approx(19 * 100 / 4.0)
    assert parallel.images_per_second(2, 1050, 100, 4.0) == pytest.approx(19 * 100 / 4.0)  # full batches
    assert parallel.scaling_efficiency(360.0, 4, 100.0) == pytest.approx(0.9)


# ---------------------------------------------------------------- predict against onnxruntime

@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
def test_predict_vs_onnxruntime_prints_both_rates_from_the_same_images(tmp_path, capsys):
    from benchmarks import predict_vs_onnxruntime as versus_onnx

    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (48, 28, 28)), 0x803)
    threads = torch.get_num_threads()
    try:
        rates = versus_onnx.main(["--data", str(tmp_path), "--images", "48", "--batch-size", "16",
                                  "--rounds", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)  # the script sets the process's thread count
    out = capsys.readouterr().out
    assert set(rates) == {"torch (cnnspec predict)", "onnxruntime", "torch, network in channels-last too",
                          "cnnspec predict, engine auto, end to end"}
    assert "engine auto chose torch for 48 images" in out and "in-memory export + session" in out
    assert all(rate > 0 for rate in rates.values())
    assert "48 Fashion-MNIST test images, batch 16, 1 threads" in out
    difference = float(re.search(r"largest probability difference ([\d.e+-]+)", out).group(1))
    assert difference < 1e-4  # the exported model computes what cnnspec's does


def test_own_images_candidates_change_what_they_name(tmp_path):
    """Each candidate of benchmarks/own_images_recipes.py is valid params (a renamed key
    fails here) and differs from the shipped own-images default where it says."""
    from benchmarks import own_images_recipes as own

    loaded = {}
    for name, overrides in own.CANDIDATES.items():
        (tmp_path / name).mkdir()
        loaded[name] = own.candidate_params(overrides, 0, tmp_path / name)[1]
    shipped = loaded["shipped"]
    assert shipped["model"]["spec"] == "specs/small_images.yaml" and shipped["recipe"] == "small_images"
    assert shipped["train"]["cpu_precision"] == "bf16" and shipped["train"]["loss"]["label_smoothing"] == 0.1
    assert loaded["fp32_no_smoothing"]["train"]["cpu_precision"] == "off"
    assert loaded["fp32_no_smoothing"]["train"]["loss"]["label_smoothing"] == 0.0
    assert loaded["lookahead"]["train"]["lookahead"]["enabled"] and not shipped["train"]["lookahead"]["enabled"]
    assert loaded["ema"]["train"]["ema"] == {"enabled": True, "decay": 0.99}
    assert loaded["onecycle"]["train"]["scheduler"]["name"] == "onecycle"
    assert loaded["fashion_cpu"]["train"]["optimizer"]["name"] == "sgd"
    assert not loaded["fashion_cpu"]["train"]["augment"]["hflip"]


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_own_images_benchmark_trains_each_candidate_on_real_images_and_prints_a_table(capsys, tmp_path,
                                                                                       monkeypatch):
    from benchmarks import own_images_recipes as own

    monkeypatch.chdir(tmp_path)
    own.main(["--sizes", "200", "--seeds", "1", "--candidates", "shipped", "--test-images", "500"])
    assert Path.cwd() == tmp_path  # the script works in the repository and comes back
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"200 images, seed 0, shipped: ([\d.]+)% test accuracy", printed).group(1))
    assert accuracy > 40  # chance is 10%
    assert re.search(r"^\| 200 \| shipped \| [\d.]+% \([\d.]+%-[\d.]+%\) \| [\d.]+ \|$", printed, re.M)
