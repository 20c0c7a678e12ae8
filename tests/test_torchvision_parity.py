"""The shipped MobileNetV2, MobileNetV3-Small and EfficientNet-B0 specs are torchvision's
models: the same parameter count for 10 classes, the same parameters in the same order,
and, with torchvision's (randomly initialised) weights copied in, the same logits."""
from pathlib import Path

import pytest
import torch
import torchvision

from cnnspec.models.compiler import build_model
from cnnspec.models.shapes import infer
from cnnspec.models.summary import summarize
from cnnspec.spec.reader import load_spec

SPECS = Path(__file__).resolve().parent.parent / "specs"
CLASSES = 10


def copy_in_order(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Load source's state_dict into target by position: names differ, order and shapes must not."""
    theirs, ours = source.state_dict(), target.state_dict()
    assert len(theirs) == len(ours)
    for (their_name, value), (our_name, slot) in zip(theirs.items(), ours.items()):
        assert value.shape == slot.shape, (their_name, our_name)
    target.load_state_dict(dict(zip(ours, theirs.values())))


@pytest.mark.parametrize("spec, model_name, size", [
    ("mobilenet_v2.yaml", "mobilenet_v2", 32),
    ("mobilenet_v3_small.yaml", "mobilenet_v3_small", 32),
    ("efficientnet_b0.yaml", "efficientnet_b0", 32),
])
def test_spec_equals_torchvision(spec, model_name, size):
    torch.manual_seed(0)
    reference = torchvision.models.get_model(model_name, weights=None, num_classes=CLASSES).eval()
    loaded = load_spec(SPECS / spec)
    summary = summarize(loaded, num_classes=CLASSES)
    assert summary.trainable == sum(p.numel() for p in reference.parameters())
    assert infer(loaded, None, CLASSES).warnings == []
    ours = build_model(loaded, num_classes=CLASSES).eval()
    copy_in_order(reference, ours)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = reference(images), ours(images)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()


def test_the_docs_give_each_spec_s_true_line_count():
    import re

    docs = (SPECS.parent / "docs" / "spec.md").read_text()
    stated = dict(re.findall(r"`specs/(\w+\.yaml)` \((\d+) lines\)", docs))
    assert set(stated) == {"mobilenet_v2.yaml", "mobilenet_v3_small.yaml", "efficientnet_b0.yaml"}
    for name, lines in stated.items():
        assert len((SPECS / name).read_text().splitlines()) == int(lines), name
