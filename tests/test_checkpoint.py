"""Checkpoints: self-contained, reloadable with weights_only=True, and a hostile file
is refused without running its code."""
import os
import pickle

import pytest
import torch

import cnnspec
from cnnspec.errors import CnnspecError, TrainingError
from cnnspec.models.checkpoint import FORMAT, load_network, save_checkpoint
from cnnspec.version import cnnspec_version

SPEC = """name: tiny
layers:
  - conv: {filters: 4, bias: false}
  - bn
  - activation: relu
  - global_avg_pool
  - dense: {units: num_classes}
"""
META = {"classes": ["a", "b", "c"], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2],
        "input_shape": [3, 8, 8]}


def saved_model(tmp_path):
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(SPEC)
    spec = cnnspec.load_spec(spec_path)
    torch.manual_seed(3)
    model = cnnspec.build_model(spec, (3, 8, 8), 3)
    with torch.no_grad():
        model(torch.randn(4, 3, 8, 8))  # move the BN running statistics off their defaults
    path = tmp_path / "model.pt"
    save_checkpoint(path, model.eval(), spec, META, {"train": {"epochs": 2}}, epoch=1, best_epoch=0)
    return model, path


def test_checkpoint_reloads_the_same_model(tmp_path):
    model, path = saved_model(tmp_path)
    loaded, checkpoint = load_network(path)
    images = torch.randn(5, 3, 8, 8)
    assert torch.equal(loaded(images), model(images))
    assert not loaded.training
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["spec_text"] == SPEC
    assert checkpoint["classes"] == META["classes"] and checkpoint["num_classes"] == 3
    assert checkpoint["mean"] == META["mean"] and checkpoint["input_shape"] == [3, 8, 8]
    assert checkpoint["params"] == {"train": {"epochs": 2}}
    assert (checkpoint["epoch"], checkpoint["best_epoch"]) == (1, 0)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file


class WritesAMarker:
    """Unpickling this calls os.system: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "state_dict": WritesAMarker(marker)}, path)
    with pytest.raises(TrainingError) as caught:
        load_network(path)
    assert not marker.exists()
    assert "weights_only" in str(caught.value) and "\n" not in str(caught.value)
    # the same for a bare pickle file, not made by torch.save
    path.write_bytes(pickle.dumps(WritesAMarker(marker)))
    with pytest.raises(TrainingError):
        load_network(path)
    assert not marker.exists()


def test_files_that_are_not_cnnspec_checkpoints_are_one_line_errors(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    for path, words in [(other, "not a cnnspec checkpoint"), (garbage, "not a loadable"),
                        (tmp_path / "missing.pt", "no such checkpoint")]:
        with pytest.raises(TrainingError) as caught:
            load_network(path)
        assert words in str(caught.value) and str(path) in str(caught.value)
        assert "\n" not in str(caught.value)


def test_weights_that_do_not_fit_the_spec_are_a_training_error(tmp_path):
    _, path = saved_model(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"] = {"nonsense": torch.zeros(1)}
    del checkpoint["weights_sha256"]  # an older checkpoint: no digest to catch the change first
    torch.save(checkpoint, path)
    with pytest.raises(TrainingError, match="do not fit"):
        load_network(path)


def resaved(path, **changes):
    """The checkpoint at `path` saved again with `changes` (None deletes a key)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in changes.items():
        if value is None:
            checkpoint.pop(key, None)
        else:
            checkpoint[key] = value
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_names_the_cnnspec_that_wrote_it(tmp_path):
    _, path = saved_model(tmp_path)
    assert torch.load(path, weights_only=True)["cnnspec_version"] == cnnspec_version() != ""


def test_a_newer_format_names_its_cnnspec_and_says_to_upgrade(tmp_path):
    _, path = saved_model(tmp_path)
    resaved(path, format="cnnspec-checkpoint/2", cnnspec_version="9.4.0")
    with pytest.raises(TrainingError) as caught:
        load_network(path)
    said = str(caught.value)
    assert "'cnnspec-checkpoint/2' written by cnnspec 9.4.0" in said and cnnspec_version() in said
    assert "newer cnnspec: upgrade cnnspec" in said and "\n" not in said


def test_a_stored_spec_this_cnnspec_does_not_know_points_to_the_cnnspec_that_wrote_it(tmp_path):
    """A layer type or option a newer cnnspec has: the spec passed that cnnspec's checks."""
    _, path = saved_model(tmp_path)
    newer_option = SPEC.replace("bias: false", "bias: false, padding_mode: circular_v2")
    newer_layer = SPEC.replace("  - bn\n", "  - bn\n  - squeeze_excite_v2: {ratio: 4}\n")
    for spec_text, error in [(newer_option, TrainingError), (newer_layer, CnnspecError)]:
        resaved(path, spec_text=spec_text, cnnspec_version="9.4.0")
        with pytest.raises(error, match="it was written by cnnspec 9.4.0, this is cnnspec .*: load it "
                                        "with cnnspec 9.4.0$"):
            load_network(path)
        resaved(path, cnnspec_version=None)  # older files name no version
        with pytest.raises(error, match=r"if it was trained with a newer cnnspec than this one \(.*\), "
                                        "upgrade cnnspec to load it$"):
            load_network(path)


def test_an_odd_cnnspec_version_is_never_shown_nor_refused(tmp_path):
    model, path = saved_model(tmp_path)
    resaved(path, cnnspec_version=["not", "text"])
    loaded, _ = load_network(path)  # an informational key: it never stops a load
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(images), model(images))
    resaved(path, format="cnnspec-checkpoint/2", cnnspec_version="1.0\n\x1b[2J")
    with pytest.raises(TrainingError) as caught:
        load_network(path)
    assert "written by" not in str(caught.value) and "\x1b" not in str(caught.value)


def test_an_older_or_newer_checkpoint_loads_without_the_optional_keys_or_with_unknown_ones(tmp_path):
    model, path = saved_model(tmp_path)
    optional = ["image_size", "channels", "resize", "weights_sha256", "cnnspec_version", "spec_path",
                "params", "epoch", "best_epoch"]
    resaved(path, **dict.fromkeys(optional), augment_policy={"name": "trivial"})
    loaded, checkpoint = load_network(path)
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(images), model(images))
    assert cnnspec.load_model(path).image_size == (8, 8)


def test_a_checkpoint_saved_on_a_gpu_or_in_half_precision_loads_on_a_cpu(tmp_path, monkeypatch):
    import torch.serialization

    model, path = saved_model(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    with monkeypatch.context() as patch:  # what torch.save writes for tensors on cuda:0
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(checkpoint, path)
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(load_network(path)[0](images), model(images))
    half = {name: tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
            for name, tensor in checkpoint["state_dict"].items()}
    resaved(path, state_dict=half, weights_sha256=None)
    loaded, _ = load_network(path)
    assert next(loaded.parameters()).dtype == torch.float32
    assert torch.allclose(loaded(images), model(images), atol=0.05)
