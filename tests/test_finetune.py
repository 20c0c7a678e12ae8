"""Fine-tuning: train.init_from (match by layer name and shape, head re-initialised for
another number of classes) and train.unfreeze (frozen layers join at an epoch, and a
run killed before or after that epoch resumes exactly)."""
import functools
import os
import signal

import pytest
import torch
import yaml

import cnnspec
from cnnspec.errors import ParamsError
from cnnspec.models.checkpoint import save_checkpoint
from cnnspec.pipeline.params import load_params
from cnnspec.training.finetune import check_init_from, init_from
from cnnspec.training.loop import train
from cnnspec.training.stops import TrainingInterrupted
from tests.tinytraining import Sabotage, tiny_data, train_params, write_stage_inputs

SPEC = """name: base
layers:
  - conv: {filters: 8, bias: false, name: stem}
  - bn: {name: stem_bn}
  - activation: relu
  - conv: {filters: 8, name: upper}
  - global_avg_pool
  - dense: {units: num_classes, name: head}
"""
FROZEN_SPEC = SPEC.replace("name: stem}", "name: stem, trainable: false}").replace(
    "{name: stem_bn}", "{name: stem_bn, trainable: false}")
META = {"classes": ["cat", "dog", "ship"], "mean": [0.5] * 3, "std": [0.3] * 3, "input_shape": [3, 8, 8]}


def build(spec_text=SPEC, classes=3, seed=0):
    torch.manual_seed(seed)
    return cnnspec.build_model(cnnspec.parse_spec(spec_text, "spec.yaml"), (3, 8, 8), classes)


def trained_checkpoint(tmp_path, spec_text=SPEC):
    model = train(build(spec_text), tiny_data(), train_params(epochs=1), "cpu").model
    path = tmp_path / "base.pt"
    save_checkpoint(path, model, cnnspec.parse_spec(spec_text, "spec.yaml"), META, {}, 0, 0)
    return path, model


def test_a_checkpoint_of_the_same_spec_loads_every_tensor(tmp_path, capsys):
    path, trained = trained_checkpoint(tmp_path)
    model = build(seed=1)
    report = init_from(model, path)
    assert not (report["reshaped"] or report["missing"] or report["unused"])
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    out = capsys.readouterr().out
    total = len([key for key in trained.state_dict() if not key.endswith("num_batches_tracked")])
    assert f"loaded {total} of {total} tensors" in out and "stem, stem_bn, upper, head" in out
    assert "num_batches_tracked" not in out and "note:" not in out


def test_another_number_of_classes_reinitialises_the_head_and_says_so(tmp_path, capsys):
    path, trained = trained_checkpoint(tmp_path)
    fresh = build(classes=5, seed=1)
    model = build(classes=5, seed=1)
    report = init_from(model, path)
    assert report["reshaped"] == ["layers.head.weight", "layers.head.bias"]
    assert torch.equal(model.state_dict()["layers.head.weight"], fresh.state_dict()["layers.head.weight"])
    assert torch.equal(model.state_dict()["layers.upper.weight"], trained.state_dict()["layers.upper.weight"])
    out = capsys.readouterr().out
    assert "\n  the head is re-initialised: the checkpoint has 3 classes, this model 5\n" in out
    assert "not loaded, other shape (fresh weights): layers.head.weight [3, 8] -> [5, 8]" in out


def test_the_head_line_never_blames_the_head_for_another_layers_shape(tmp_path, capsys):
    """Another channel count and another number of classes: the first conv is listed
    among the other shapes, the head line stands apart."""
    path, _ = trained_checkpoint(tmp_path)
    torch.manual_seed(1)
    model = cnnspec.build_model(cnnspec.parse_spec(SPEC, "spec.yaml"), (1, 8, 8), 5)
    init_from(model, path)
    out = capsys.readouterr().out
    shapes = next(line for line in out.splitlines() if "other shape" in line)
    assert shapes.startswith("  not loaded, other shape (fresh weights): layers.stem.weight [")
    assert "re-initialised" not in shapes
    assert "  the head is re-initialised: the checkpoint has 3 classes, this model 5" in out.splitlines()


def test_a_checkpoint_sharing_only_a_bn_step_counter_is_of_another_spec(tmp_path):
    """Two unrelated specs both name a batch norm stem_bn: its num_batches_tracked counter
    fits, but no weight does, and that is the error, not a run from scratch."""
    path, _ = trained_checkpoint(tmp_path)
    other = SPEC.replace("filters: 8, bias: false, name: stem", "filters: 16, bias: false, name: stem").replace(
        "filters: 8, name: upper", "filters: 12, name: upper")
    torch.manual_seed(1)
    model = cnnspec.build_model(cnnspec.parse_spec(other, "o.yaml"),
                                (3, 8, 8), 4)
    with pytest.raises(ParamsError, match="no weight fits this model's spec"):
        init_from(model, path)


def test_other_input_settings_are_named_when_they_keep_tensors_from_loading(tmp_path, capsys):
    flat = SPEC.replace("  - global_avg_pool\n", "  - flatten\n")  # the head's size follows the image size
    path, _ = trained_checkpoint(tmp_path, flat)
    torch.manual_seed(1)
    model = cnnspec.build_model(cnnspec.parse_spec(flat, "spec.yaml"), (1, 6, 6), 3)
    report = init_from(model, path)
    assert report["reshaped"] == ["layers.stem.weight", "layers.head.weight"]
    out = capsys.readouterr().out
    assert ("the checkpoint was trained on 3x8x8 images, this model takes 1x6x6: on your own images "
            "(data.dataset folder or csv), -S data.channels=3 -S data.image_size=[8,8] would make more of it "
            "fit; a built-in dataset keeps its own size") in out
    assert "head is re-initialised" not in out  # same classes: the head is other-shaped, not re-sized
    assert "num_batches_tracked" not in out


def test_class_names_that_differ_from_the_checkpoints_are_said_in_one_line(tmp_path, capsys):
    path, _ = trained_checkpoint(tmp_path)
    init_from(build(seed=1), path, classes=["cat", "dog", "ship"])
    assert "note:" not in capsys.readouterr().out
    init_from(build(seed=1), path, classes=["dog", "cat", "ship"])
    lines = [line for line in capsys.readouterr().out.splitlines() if "note:" in line]
    assert len(lines) == 1 and "in another order" in lines[0] and "data.classes" in lines[0]
    init_from(build(seed=1), path, classes=["car", "plane", "ship"])
    assert "other names (cat, dog, ship; here car, plane, ship)" in capsys.readouterr().out


def test_a_partly_matching_spec_loads_the_layers_with_the_same_name_and_shape(tmp_path, capsys):
    path, trained = trained_checkpoint(tmp_path)
    other = SPEC.replace("{filters: 8, name: upper}", "{filters: 8, name: upper}\n  - conv: {filters: 8, name: extra}")
    model = build(other)
    report = init_from(model, path)
    assert report["missing"] == ["layers.extra.weight", "layers.extra.bias"]
    assert "layers.stem.weight" in report["loaded"] and "layers.head.weight" in report["loaded"]
    assert "not in the checkpoint (fresh weights): layers.extra.weight, layers.extra.bias" in capsys.readouterr().out


def test_a_checkpoint_of_an_unrelated_spec_is_an_error_naming_the_param(tmp_path):
    path, _ = trained_checkpoint(tmp_path)
    unrelated = "name: other\nlayers:\n  - flatten\n  - dense: {units: num_classes, name: classifier}\n"
    with pytest.raises(ParamsError) as caught:
        init_from(build(unrelated), path)
    message = str(caught.value)
    assert message.startswith("params.yaml: train.init_from: ") and "layers.classifier.weight" in message
    assert "\n" not in message


def test_init_from_the_train_stages_own_output_says_to_copy_it_first(tmp_path, monkeypatch):
    """DVC removes models/model.pt before the train stage runs: fine-tuning from it in place
    would end in `no such file` with the model gone, so it is refused, even while it exists."""
    from cnnspec.pipeline.params import check_named_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"a checkpoint")
    for value in ("models/model.pt", "./models/model.pt", str(tmp_path / "models" / "model.pt")):
        with pytest.raises(ParamsError) as caught:
            check_named_paths({"train": {"init_from": value}})
        assert str(caught.value) == (
            f"params.yaml: train.init_from: {value}: is the train stage's output, which DVC removes before the "
            f"stage runs; copy it first (cp models/model.pt models/base.pt) and start from the copy "
            f"(docs/finetune.md)")
    (tmp_path / "models" / "base.pt").write_bytes(b"a checkpoint")
    check_named_paths({"train": {"init_from": "models/base.pt"}})


def test_init_from_must_name_an_existing_checkpoint_of_the_right_type(tmp_path):
    with pytest.raises(ParamsError, match=r"^params.yaml: train.init_from: .*missing.pt: no such file$"):
        check_init_from({"init_from": str(tmp_path / "missing.pt")})
    assert check_init_from({"init_from": ""}) is None
    params = yaml.safe_load((__import__("pathlib").Path(__file__).parent.parent / "params.yaml").read_text())
    params["train"]["init_from"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="train.init_from"):
        load_params(tmp_path / "params.yaml", ["train"])
    params["train"]["init_from"] = ""
    params["train"]["unfreeze"] = {"after_epochs": -1, "layers": []}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="train.unfreeze.after_epochs"):
        load_params(tmp_path / "params.yaml", ["train"])


def test_a_loaded_whitening_layer_keeps_its_filters(tmp_path):
    spec = "name: w\nlayers:\n  - whiten: {kernel: 2, name: whiten}\n  - global_avg_pool\n  - dense: num_classes\n"
    path, trained = trained_checkpoint(tmp_path, spec)
    model = build(spec, seed=1)
    init_from(model, path)
    model.init_from_data(torch.randn(16, 3, 8, 8))
    assert torch.equal(model.state_dict()["layers.whiten.weight"], trained.state_dict()["layers.whiten.weight"])


# ---------------------------------------------------------------- unfreeze schedule

UNFREEZE = {"after_epochs": 2, "layers": ["stem", "stem_bn"]}


def unfreeze_params(**changes):
    params = train_params(**({"epochs": 4, "unfreeze": UNFREEZE} | changes))
    params["optimizer"].update(weight_decay=0.01)  # a frozen weight must not decay either
    return params


def run(params, folder=None, model=None):
    resume = None if folder is None else folder / "state.pt"
    return train(model or build(FROZEN_SPEC), tiny_data(), params, "cpu", resume_path=resume, fingerprint="f")


def test_named_layers_stay_frozen_until_their_epoch_then_train(capsys):
    initial = build(FROZEN_SPEC).state_dict()
    before = run(unfreeze_params(epochs=2)).model.state_dict()
    after = run(unfreeze_params(epochs=4)).model.state_dict()  # lookahead syncs at step 10
    for key in ("layers.stem.weight", "layers.stem_bn.weight", "layers.stem_bn.running_mean"):
        assert torch.equal(before[key], initial[key]), key  # frozen: no step, no decay, BN stats kept
        assert not torch.equal(after[key], initial[key]), key  # trained from the third epoch on
    assert not torch.equal(before["layers.upper.weight"], initial["layers.upper.weight"])
    assert "epoch 3: unfreezing stem, stem_bn" in capsys.readouterr().out


def test_unfreezing_a_layer_that_is_not_frozen_or_after_the_last_epoch_is_said(capsys):
    with pytest.raises(ParamsError, match=r"train.unfreeze.layers: 'upper' is not frozen, so there is nothing "
                                          r"to unfreeze \(mark it trainable: false in the spec\)"):
        run(train_params(unfreeze={"after_epochs": 1, "layers": ["upper"]}))
    initial = build(FROZEN_SPEC).state_dict()
    late = run(unfreeze_params(epochs=2, unfreeze={"after_epochs": 2, "layers": ["stem"]})).model.state_dict()
    assert torch.equal(late["layers.stem.weight"], initial["layers.stem.weight"])  # never unfrozen
    assert ("warning: train.unfreeze.after_epochs 2 is not below train.epochs 2: stem stay frozen for the "
            "whole run") in capsys.readouterr().err


def test_a_name_matching_no_layer_is_an_error_naming_the_param():
    params = train_params(unfreeze={"after_epochs": 1, "layers": ["stme"]})
    with pytest.raises(ParamsError, match=r"train.unfreeze.layers: 'stme' names no layer.*stem"):
        run(params)


@functools.cache
def uninterrupted():
    return run(unfreeze_params())


@pytest.mark.parametrize("stop_at_call", [5, 8, 11], ids=["before-unfreeze", "in-unfreeze-epoch", "after-unfreeze"])
@pytest.mark.parametrize("how", ["ctrl_c", "kill"])
def test_a_run_stopped_before_or_after_the_unfreeze_resumes_exactly(tmp_path, stop_at_call, how):
    params = unfreeze_params()
    reference = uninterrupted()

    def stop(out):
        if how == "ctrl_c":
            os.kill(os.getpid(), signal.SIGINT)
            return out
        raise SystemExit("killed")  # dies mid-epoch: only the last epoch's state is on disk

    with pytest.raises((TrainingInterrupted, SystemExit)):
        run(params, tmp_path, Sabotage(build(FROZEN_SPEC), stop_at_call, stop))
    resumed = run(params, tmp_path)
    assert resumed.resumed_from_epoch == (stop_at_call - 1) // 3
    assert resumed.history == reference.history
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_the_train_stage_fine_tunes_from_init_from_and_refuses_a_missing_file(tmp_path, monkeypatch, capsys):
    import shutil

    from stages import train as stage

    write_stage_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    stage.run()
    shutil.move("models/model.pt", "base.pt")
    params = yaml.safe_load(open("params.yaml"))
    params["train"]["init_from"] = "missing.pt"
    yaml.safe_dump(params, open("params.yaml", "w"))
    with pytest.raises(ParamsError, match=r"^params.yaml: train.init_from: missing.pt: no such file$"):
        stage.run()
    assert not (tmp_path / "models" / "model.pt").exists()

    params["train"]["init_from"] = "base.pt"
    params["train"]["epochs"] = 1
    yaml.safe_dump(params, open("params.yaml", "w"))
    capsys.readouterr()
    stage.run()
    out = capsys.readouterr().out
    base = [key for key in torch.load("base.pt", weights_only=True)["state_dict"]
            if not key.endswith("num_batches_tracked")]
    assert f"train.init_from: loaded {len(base)} of {len(base)} tensors from base.pt" in out
    assert (tmp_path / "models" / "model.pt").exists()


def test_the_train_stage_starts_from_model_weights_matched_by_structure(tmp_path, monkeypatch, capsys):
    from stages import train as stage
    from tests.test_training import write_stage_inputs

    write_stage_inputs(tmp_path, epochs=1)
    monkeypatch.chdir(tmp_path)
    stage.run()
    weights = torch.load("models/model.pt", weights_only=True)["state_dict"]
    modules = list(dict.fromkeys(key.rsplit(".", 1)[0] for key in weights))
    renamed = {f"net.{modules.index(key.rsplit('.', 1)[0])}.{key.rsplit('.', 1)[1]}": value
               for key, value in weights.items()}
    torch.save(renamed, "pretrained.pth")  # other names (net.0.weight, ...), same order and shapes
    params = yaml.safe_load(open("params.yaml"))
    params["model"]["weights"] = "pretrained.pth"
    yaml.safe_dump(params, open("params.yaml", "w"))
    capsys.readouterr()
    stage.run()
    assert f"model.weights: loaded {len(weights)} of {len(weights)} tensors" in capsys.readouterr().out
    params["model"]["weights"] = "missing.pth"  # the stage's error names params.yaml's key
    yaml.safe_dump(params, open("params.yaml", "w"))
    with pytest.raises(ParamsError, match=r"^params.yaml: model.weights: missing.pth: no such file"):
        stage.run()
