"""Every seed architecture's spec has the seed's exact parameter counts,
and the ResNet-18 / SqueezeNet specs match torchvision's models."""
from pathlib import Path

import pytest
import torch
import torchvision

from cnnspec.models.compiler import build_model
from cnnspec.models.summary import summarize

SPECS = Path(__file__).resolve().parent.parent / "specs"


def trainable_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("spec, total, trainable, non_trainable", [
    ("ironhack_cnn.yaml", 551_466, 551_018, 448),        # seed 000, sequential_18
    ("simcnn.yaml", 122_570, 122_570, 0),                # seed 004
    ("fan.yaml", 87_316_426, None, None),                # seed 002
    ("resnet50v2_transfer.yaml", 26_159_370, None, None),  # seed 002
])
def test_seed_totals(spec, total, trainable, non_trainable):
    summary = summarize(SPECS / spec, num_classes=10)
    assert summary.total == total
    if trainable is not None:
        assert (summary.trainable, summary.non_trainable) == (trainable, non_trainable)


@pytest.mark.parametrize("spec, trainable", [
    ("resnet18.yaml", 11_181_642),        # seed 000's torchsummary table
    ("resnet18_cifar.yaml", 11_173_962),  # 3x3 stem, no max pool
    ("squeezenet.yaml", 727_626),         # torchvision squeezenet1_1(num_classes=10)
])
def test_trainable_counts(spec, trainable):
    assert summarize(SPECS / spec, num_classes=10).trainable == trainable
    assert trainable_params(build_model(SPECS / spec, num_classes=10)) == trainable


def test_resnet50v2_base_is_frozen_keras_resnet50v2():
    """The base written in the language has Keras ResNet50V2's 23,564,800 params, all frozen."""
    summary = summarize(SPECS / "resnet50v2_transfer.yaml")
    base = next(row for row in summary.rows if row.name == "resnet50v2")
    assert base.params == 23_564_800
    model = build_model(SPECS / "resnet50v2_transfer.yaml")
    assert not any(p.requires_grad for p in model.layers.resnet50v2.parameters())
    assert summary.trainable == trainable_params(model)


@pytest.mark.parametrize("spec, reference, size", [
    ("resnet18.yaml", torchvision.models.resnet18, 64),
    ("squeezenet.yaml", torchvision.models.squeezenet1_1, 96),
])
def test_matches_torchvision(spec, reference, size):
    torch.manual_seed(0)
    ours = build_model(SPECS / spec, input_shape=(3, size, size), num_classes=10).eval()
    theirs = reference(num_classes=10).eval()
    assert trainable_params(ours) == trainable_params(theirs)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert ours(x).shape == theirs(x).shape == (2, 10)
    # Same tensors layer by layer: the spec reproduces the architecture, not just the total.
    assert sorted(p.shape for p in ours.parameters()) == sorted(p.shape for p in theirs.parameters())


def test_resnet18_computes_what_torchvision_computes():
    """With torchvision's weights copied in order, both give the same logits."""
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18(num_classes=10).eval()
    ours = build_model(SPECS / "resnet18.yaml", input_shape=(3, 64, 64), num_classes=10).eval()
    ours_state = ours.state_dict()
    # Both orders list each block's body before its shortcut (downsample).
    assert len(ours_state) == len(theirs.state_dict())
    ours.load_state_dict(dict(zip(ours_state, theirs.state_dict().values())))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
