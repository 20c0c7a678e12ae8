"""Checkpoints: self-contained, reloadable with weights_only=True, and a hostile file
is refused without running its code."""
import os
import pickle

import pytest
import torch

import cnnspec
from cnnspec.errors import TrainingError
from cnnspec.models.checkpoint import FORMAT, load_network, save_checkpoint

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
