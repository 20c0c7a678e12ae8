"""The benchmark against Keras, Lightning and a plain PyTorch script compares like with
like: the four build networks with equal parameter counts (and it stops when they do
not), every framework gets the same images, and the printed table has one row per
framework with ratios to cnnspec; all four start from the same initial weights (the same
outputs before training). Timings are printed, never asserted."""
import dataclasses
import gzip
import importlib.util
import json
import re

import numpy as np
import pytest
import torch

from benchmarks import versus_peers as peers

needs_peers = pytest.mark.skipif(
    importlib.util.find_spec("keras") is None or importlib.util.find_spec("pytorch_lightning") is None,
    reason="the bench extra (keras, pytorch-lightning) is not installed: pip install -e '.[bench]'")


def _write_idx(path, array, magic):
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fashion(tmp_path):
    """Fashion-MNIST-shaped idx files: 200 training and 40 test images whose class is
    the brightness of the image, so one epoch learns something."""
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 200), ("t10k", 40)):
        labels = np.arange(count) % 10
        images = np.clip(labels[:, None, None] * 25 + rng.integers(0, 20, (count, 28, 28)), 0, 255)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, 0x803)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x801)
    return tmp_path


def _task(data, model="simcnn"):
    return peers.Task(model=model, **data, epochs=1, batch=32, lr=1e-3, hflip=False, seed=0,
                      device=torch.device("cpu"), workers=0)


def test_training_set_is_cut_to_whole_batches(tiny_fashion):
    data = peers.fashion_task_data(tiny_fashion, None, 30, batch=64)
    assert len(data["train_labels"]) == 192 and data["train_images"].shape == (192, 1, 28, 28)
    assert len(data["test_labels"]) == 30
    assert data["train_images"].flags.writeable


@pytest.mark.parametrize("model", ["simcnn", "ironhack_cnn", "resnet18_cifar", "fashion_cpu"])
def test_hand_written_torch_model_matches_the_spec(tiny_fashion, model):
    task = _task(peers.fashion_task_data(tiny_fashion, None, None, batch=32), model)
    assert peers.torch_counts(peers.torch_architecture(task)) == peers.torch_counts(peers.cnnspec_model(task))


@needs_peers
@pytest.mark.parametrize("model", ["simcnn", "ironhack_cnn", "resnet18_cifar", "fashion_cpu"])
def test_all_four_build_the_same_network(tiny_fashion, model):
    task = _task(peers.fashion_task_data(tiny_fashion, None, None, batch=32), model)
    counts = peers.parameter_counts(task)
    assert set(counts) == set(peers.FRAMEWORKS) and len(set(counts.values())) == 1
    if model == "ironhack_cnn":
        assert counts["keras"][1] == 448  # 3 batch norms' moving mean and variance: 2 x (32 + 64 + 128)
    if model == "fashion_cpu":
        assert counts["cnnspec"] == (160_874, 640)  # 5 batch norms' statistics: 2 x (32 + 48 + 48 + 96 + 96)


@needs_peers
def test_a_different_network_stops_the_benchmark(tiny_fashion, monkeypatch):
    task = _task(peers.fashion_task_data(tiny_fashion, None, None, batch=32))
    monkeypatch.setattr(peers.torch_models, "torch_model", lambda task: torch.nn.Linear(784, 10))
    with pytest.raises(SystemExit, match="simcnn: parameter counts differ .*plain 7,850 trainable"):
        peers.parameter_counts(task)


def test_flatten_order_conversion_for_the_first_dense_layer():
    """torch flattens a feature map (c, h, w), Keras (h, w, c): the converted kernel gives
    the Keras-layout input the torch layer's output, and a plain transpose would not."""
    torch.manual_seed(0)
    channels, height, width = 3, 2, 4
    feature_map = torch.randn(5, channels, height, width)
    dense = torch.nn.Linear(channels * height * width, 7, bias=False)
    expected = dense(feature_map.flatten(1)).detach().numpy()
    keras_input = feature_map.permute(0, 2, 3, 1).reshape(5, -1).numpy()
    kernel = peers.keras_dense_kernel(dense.weight.detach(), (height, width, channels))
    assert kernel.shape == (channels * height * width, 7)
    np.testing.assert_allclose(keras_input @ kernel, expected, rtol=1e-5, atol=1e-5)
    transposed = peers.keras_dense_kernel(dense.weight.detach(), None)
    assert np.abs(keras_input @ transposed - expected).max() > 0.1
    np.testing.assert_allclose(feature_map.flatten(1).numpy() @ transposed, expected, rtol=1e-5, atol=1e-5)


def test_torch_module_gets_cnnspecs_initial_weights(tiny_fashion):
    task = _task(peers.fashion_task_data(tiny_fashion, None, None, batch=32), "ironhack_cnn")
    source = peers.cnnspec_model(task)
    target = peers.torch_architecture(dataclasses.replace(task, seed=1))
    assert not torch.equal(target[0].weight, source.state_dict()["layers.conv_conv_bn_pool_1.conv_1.weight"])
    target[4].running_var.fill_(3.0)  # batch-norm statistics are copied too
    peers.copy_torch_weights(source, target)
    for ours, theirs in zip(peers.torch_models.weights(source), peers.torch_models.weights(target), strict=True):
        assert torch.equal(ours, theirs)
    assert all(torch.equal(ours, theirs) for ours, theirs in
               zip(peers.torch_models.weights(source),
                   peers.torch_models.weights(peers.torch_model(task)), strict=True))
    with pytest.raises(SystemExit, match="do not line up"):
        peers.copy_torch_weights(source, peers.torch_architecture(dataclasses.replace(task, model="simcnn")))


@needs_peers
@pytest.mark.parametrize("model", ["simcnn", "ironhack_cnn", "resnet18_cifar", "fashion_cpu"])
def test_all_four_start_from_the_same_weights(tiny_fashion, model):
    task = _task(peers.fashion_task_data(tiny_fashion, None, None, batch=32), model)
    outputs = peers.start_logits(task)
    assert set(outputs) == {"cnnspec", "torch", "keras"} and outputs["cnnspec"].shape == (32, 10)
    assert np.abs(outputs["cnnspec"]).max() > 0.5  # log-probabilities of ten classes, not zeros
    for name in ("torch", "keras"):
        np.testing.assert_allclose(outputs[name], outputs["cnnspec"], atol=1e-4)
    assert peers.check_same_start(task) <= 1e-4


@needs_peers
def test_keras_with_its_own_initial_weights_stops_the_benchmark(tiny_fashion, monkeypatch):
    task = _task(peers.fashion_task_data(tiny_fashion, None, None, batch=32))
    monkeypatch.setattr(peers.keras_fit, "set_keras_weights", lambda model, source: None)  # Glorot-uniform, zero biases
    with pytest.raises(SystemExit, match="simcnn: the frameworks do not start from the same weights"):
        peers.check_same_start(task)


def test_dvc_subset_files_decode_to_the_task_images(tiny_fashion, tmp_path):
    task = _task(peers.fashion_task_data(tiny_fashion, 96, 20, batch=32))
    folder = tmp_path / "subset"
    folder.mkdir()
    peers.write_fashion_subset(task, folder)
    decoded = peers.fashion_task_data(folder, None, None, batch=32)
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(decoded[key], getattr(task, key))
    assert decoded["train_images"].shape == (96, 1, 28, 28)


def test_summary_ratios_and_accuracy_flag():
    def run(framework, ends, accuracy):
        return peers.Run(framework, "simcnn", 0, ends, [accuracy - 0.1, accuracy], 2**20, 640)

    runs = [run("cnnspec", [2.0, 3.0], 0.80), run("keras", [3.0, 5.0], 0.85)]
    counts = {"simcnn": {"cnnspec": (10, 0), "keras": (10, 0)}}
    base, keras = peers.summarize(runs, counts, target=0.80, tolerance=0.01)
    assert base.epoch_seconds == 1.5 and keras.epoch_seconds == 2.5  # median of (2, 1) and (3, 2)
    assert keras.ratio_epoch == pytest.approx(2.5 / 1.5) and base.ratio_epoch == 1.0
    assert (base.seconds_to_target, keras.seconds_to_target) == (3.0, 5.0)  # both reach 80% in epoch 2
    assert keras.ratio_to_target == pytest.approx(5.0 / 3.0)
    assert peers.summarize(runs, counts, target=0.9, tolerance=0.01)[0].seconds_to_target is None
    assert keras.images_per_second == pytest.approx(640 / 2.5)
    assert keras.notes and "differ by 5.0 points" in keras.notes[0]
    assert not peers.summarize(runs, counts, target=0.80, tolerance=0.06)[0].notes


@needs_peers
@pytest.mark.slow
def test_quick_mode_prints_one_row_per_framework(tiny_fashion, tmp_path, capsys):
    out_json = tmp_path / "peers.json"
    rows = peers.main(["--quick", "--device", "cpu", "--data", str(tiny_fashion), "--batch", "32",
                       "--workers", "0", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert [row.framework for row in rows] == list(peers.FRAMEWORKS)
    assert len({(row.params, row.buffers) for row in rows}) == 1
    assert "192 training / 40 test images" in out
    assert re.search(r"simcnn: parameter counts equal in all four: [\d,]+ trainable", out)
    table = [line for line in out.splitlines() if line.startswith("| simcnn |")]
    assert [line.split(" | ")[1] for line in table] == list(peers.FRAMEWORKS)
    assert all(line.count("|") == 11 for line in table)
    for row in rows:
        assert row.epoch_seconds > 0 and 0.0 <= row.final_accuracy <= 1.0 and row.peak_memory > 0
        assert row.ratio_epoch == pytest.approx(row.epoch_seconds / rows[0].epoch_seconds)
    saved = json.loads(out_json.read_text())
    assert len(saved["runs"]) == 4 and all(len(run["test_accuracy"]) == 1 for run in saved["runs"])


# ---------------------------------------------------------------- the same data order everywhere

def _steps_of_a_real_run(task, monkeypatch) -> list[tuple[int, torch.Tensor]]:
    """(epoch, indices) of every step cnnspec's loop takes when it trains `task`."""
    from cnnspec.training import loop as training

    steps = []
    original_step = training.Run.step

    def recording_step(run, indices, epoch):
        steps.append((epoch, indices.clone()))
        return original_step(run, indices, epoch)

    monkeypatch.setattr(training.Run, "step", recording_step)
    peers.run_cnnspec(task)
    return steps


@pytest.mark.parametrize("hflip", [False, True])
def test_epoch_orders_are_the_ones_cnnspecs_loop_trains_in(tiny_fashion, monkeypatch, hflip):
    """The indices cnnspec's loop hands each step, recorded from a real train() call,
    are cnnspec_epoch_orders cut into consecutive batches; with hflip the flips' draws
    from the same generator are replayed, so epoch 2 still matches."""
    task = dataclasses.replace(_task(peers.fashion_task_data(tiny_fashion, None, 40, batch=32)),
                               epochs=2, hflip=hflip)
    steps = _steps_of_a_real_run(task, monkeypatch)
    orders = peers.cnnspec_epoch_orders(task)
    assert len(orders) == 2 and len(steps) == 2 * 192 // 32
    for epoch, order in enumerate(orders):
        batches = [indices for seen, indices in steps if seen == epoch]
        assert all(len(indices) == 32 for indices in batches)
        assert torch.equal(torch.cat(batches), order)
        assert sorted(order.tolist()) == list(range(192))
    assert not torch.equal(orders[0], orders[1])
    assert not torch.equal(orders[1], peers.cnnspec_epoch_orders(dataclasses.replace(task, hflip=not hflip))[1])


def test_torch_loader_serves_cnnspecs_order_each_epoch(tiny_fashion):
    task = dataclasses.replace(_task(peers.fashion_task_data(tiny_fashion, None, 40, batch=32)), epochs=2)
    train_loader, _ = peers.loaders(task)
    for epoch, order in enumerate(peers.cnnspec_epoch_orders(task)):
        train_loader.sampler.set_epoch(epoch)
        batches = list(train_loader)
        assert [len(labels) for _, labels in batches] == [32] * 6
        images = torch.cat([images for images, _ in batches])
        np.testing.assert_allclose(images.numpy(), task.normalized(task.train_images[order.numpy()]), atol=1e-6)


@needs_peers
def test_lightning_moves_the_sampler_to_each_epoch(tiny_fashion, monkeypatch):
    task = dataclasses.replace(_task(peers.fashion_task_data(tiny_fashion, None, 40, batch=32)), epochs=2)
    served = []
    original_iter = peers.EpochOrderSampler.__iter__

    def recording_iter(sampler):
        served.append(sampler.epoch)
        return original_iter(sampler)

    monkeypatch.setattr(peers.EpochOrderSampler, "__iter__", recording_iter)
    ends, accuracies = peers.run_lightning(task)
    assert served == [0, 1] and len(accuracies) == 2


@needs_peers
def test_keras_fits_each_epoch_on_cnnspecs_order_unshuffled(tiny_fashion, monkeypatch):
    task = dataclasses.replace(_task(peers.fashion_task_data(tiny_fashion, None, 40, batch=32)), epochs=2)
    keras = peers.import_keras(task.device)
    calls = []
    original_fit = keras.Model.fit

    def recording_fit(model, x, y, **options):
        calls.append((np.array(x), options["shuffle"], options["initial_epoch"], options["epochs"]))
        return original_fit(model, x, y, **options)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    ends, accuracies = peers.run_keras(task)
    assert len(ends) == len(accuracies) == 2
    for epoch, (order, (x, shuffle, initial, last)) in enumerate(zip(peers.cnnspec_epoch_orders(task), calls,
                                                                      strict=True)):
        assert (shuffle, initial, last) == (False, epoch, epoch + 1)
        expected = task.normalized(task.train_images[order.numpy()]).transpose(0, 2, 3, 1)
        np.testing.assert_allclose(x, expected, atol=1e-6)


# ---------------------------------------------------------------- --recipes own

def _own_task(data, epochs=1, **augment):
    resolved = peers.own_recipes.resolve_own_recipe("fashion_cpu", len(data["train_labels"]))
    recipe = peers.own_recipes.cnnspec_recipe(resolved, epochs, seed=0)
    recipe["augment"].update(augment)
    return peers.Task(model="fashion_cpu", **peers.whole_batches(data, recipe["batch_size"]), epochs=epochs,
                      batch=32, lr=1e-3, hflip=False, seed=0, device=torch.device("cpu"), workers=0,
                      recipe=recipe, recipe_name=resolved["recipe"])


def test_own_recipe_is_the_one_the_resolve_stage_gives(tiny_fashion):
    """fashion_cpu's recipe file over params.yaml, its batch capped to 20 steps an epoch of
    the 200 images as the resolve stage caps it, then the benchmark's epochs and channels-last."""
    task = _own_task(peers.fashion_task_data(tiny_fashion, None, None, batch=1), epochs=3)
    recipe = task.recipe
    assert task.recipe_name == "fashion_cpu" and task.recipes == "own"
    assert recipe["batch_size"] == 10 and task.torch_batch == 10 and len(task.train_labels) == 200
    assert (recipe["epochs"], recipe["channels_last"], recipe["cpu_precision"]) == (3, True, "bf16")
    assert recipe["optimizer"]["name"] == "sgd" and recipe["optimizer"]["lr"] == 0.2
    assert recipe["scheduler"]["name"] == "onecycle" and recipe["lookahead"]["enabled"]
    assert recipe["augment"]["translate"] == 0 and recipe["augment"]["hflip"]


def test_own_recipe_torch_schedule_matches_cnnspecs_onecycle(tiny_fashion):
    """The optimizer and OneCycleLR Lightning and plain build from the recipe give, step by
    step, the learning rates cnnspec's loop gets from the same recipe (make_optimizer,
    make_schedule), with the same momentum, Nesterov and weight decay."""
    from cnnspec.training import optimization

    task = _own_task(peers.fashion_task_data(tiny_fashion, None, None, batch=1), epochs=3)
    steps_per_epoch, total = 7, 21
    ours = optimization.make_optimizer(peers.cnnspec_model(task), task.recipe["optimizer"])
    our_schedule = optimization.make_schedule(ours, task.recipe["scheduler"], task.epochs, steps_per_epoch)
    theirs, their_schedule = peers.own_recipes.torch_optimizer(peers.torch_model(task).parameters(), task.recipe,
                                                               total)
    assert len(ours.param_groups) == len(theirs.param_groups) == 1
    for key in ("momentum", "nesterov", "weight_decay"):
        assert ours.param_groups[0][key] == theirs.param_groups[0][key]
    rates = []
    for _ in range(total):
        rates.append((ours.param_groups[0]["lr"], theirs.param_groups[0]["lr"]))
        ours.step()
        our_schedule.after_step()
        theirs.step()
        their_schedule.step()
    ours_lr, theirs_lr = np.array(rates).T
    np.testing.assert_allclose(theirs_lr, ours_lr, rtol=1e-9, atol=1e-12)
    assert ours_lr.argmax() in (3, 4) and ours_lr.max() == pytest.approx(0.2, rel=0.05)  # warm-up: a fifth of 21 steps
    assert ours_lr[0] == pytest.approx(0.2 / 25) and ours_lr[-1] < 1e-3


@pytest.mark.parametrize("recipes", ["shared", "own"])
def test_own_recipe_orders_are_the_ones_cnnspecs_loop_trains_in(tiny_fashion, monkeypatch, recipes):
    """With the recipe's flips and translations drawn from the loop's generator every step,
    epoch 2's order still matches a real train() call's (translations added: fashion_cpu's
    recipe has none)."""
    task = _own_task(peers.fashion_task_data(tiny_fashion, None, 40, batch=1), epochs=2, translate=2)
    steps = _steps_of_a_real_run(task, monkeypatch)
    orders = peers.cnnspec_epoch_orders(task if recipes == "own" else dataclasses.replace(task, recipe=None))
    matches = [torch.equal(torch.cat([indices for seen, indices in steps if seen == epoch]), order)
               for epoch, order in enumerate(orders)]
    assert matches == ([True, True] if recipes == "own" else [True, False])  # shared: no augmentation draws


@needs_peers
def test_keras_callbacks_live_across_the_per_epoch_fit_calls():
    """ReduceLROnPlateau and EarlyStopping keep their counters from one per-epoch fit call
    to the next (a fresh fit call resets them in on_train_begin) and EarlyStopping
    restores the best weights only when the run ends."""
    keras = peers.import_keras(torch.device("cpu"))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    plateau, early = peers.keras_fit.own_callbacks(keras)
    x, y = np.ones((8, 2), "float32"), np.zeros((8, 1), "float32")
    losses = [1.0, 2.0, 3.0, 4.0]  # val_loss never improves after epoch 0

    class FakeValLoss(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = losses[epoch]

    for epoch in range(4):
        plateau.last_fit = early.last_fit = epoch == 3
        model.fit(x, y, initial_epoch=epoch, epochs=epoch + 1, verbose=0, callbacks=[FakeValLoss(), plateau, early])
        if epoch == 0:
            best = [weight.copy() for weight in model.get_weights()]
        elif not model.stop_training:  # still training on: nothing restored yet
            assert not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), best, strict=True))
        if model.stop_training:
            break
    assert epoch == 3 and early.stopped_epoch == 3 and early.best_epoch == 0
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), best, strict=True))  # restored at the end
    assert float(model.optimizer.learning_rate) == pytest.approx(5e-4)  # halved once, after 2 epochs without gain


@needs_peers
@pytest.mark.slow
def test_own_recipes_run_prints_one_row_and_one_recipe_per_framework(tiny_fashion, tmp_path, capsys):
    out_json = tmp_path / "own.json"
    rows = peers.main(["--recipes", "own", "--models", "fashion_cpu", "--device", "cpu", "--data", str(tiny_fashion),
                       "--train-images", "0", "--epochs", "1", "--repeats", "1", "--batch", "32", "--workers", "0",
                       "--target", "0.5", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert [row.framework for row in rows] == list(peers.FRAMEWORKS)
    assert len({(row.params, row.buffers) for row in rows}) == 1
    assert "each framework's own recipe" in out
    recipes = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in out.splitlines()
               if line.startswith("| ") and line.count("|") == 3 and not line.startswith("| framework")
               and not line.startswith("| ---")}
    assert list(recipes) == list(peers.FRAMEWORKS)
    assert "recipes/fashion_cpu.yaml" in recipes["cnnspec"] and "lookahead" in recipes["cnnspec"]
    assert "OneCycleLR" in recipes["lightning"] and "left out: lookahead, channels-last" in recipes["lightning"]
    assert "fp32, NCHW" in recipes["plain"] and "EarlyStopping" in recipes["keras"]
    for row in rows:
        assert row.epochs_trained == [1] and 0.0 <= row.final_accuracy <= 1.0
    saved = json.loads(out_json.read_text())
    assert saved["settings"]["recipes"] == "own"
    assert set(saved["settings"]["recipe_lines"]["fashion_cpu"]) == set(peers.FRAMEWORKS)
    assert saved["settings"]["cnnspec_recipes"]["fashion_cpu"]["batch_size"] == 10
