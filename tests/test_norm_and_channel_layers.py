"""What the layer types ConvNeXt, ShuffleNet v2 and VGG need compute: each against the
torch / torchvision code it stands for (tests/test_registry.py checks their shapes and
counts through their schema examples)."""
import pytest
import torch
from torchvision.models.convnext import LayerNorm2d as TorchvisionLayerNorm2d
from torchvision.models.shufflenetv2 import channel_shuffle

from cnnspec.errors import SpecError
from cnnspec.models.compiler import build_model
from cnnspec.models.shapes import infer
from cnnspec.spec.reader import parse_spec

TAIL = "  - flatten\n  - dense: num_classes\n"  # a model ends in one logit per class


def spec_of(layers: str, size: int = 8, channels: int = 8) -> str:
    return f"name: t\ninput: {{channels: {channels}, height: {size}, width: {size}}}\nlayers:\n{layers}{TAIL}"


def model_of(layers: str, size: int = 8, channels: int = 8):
    """The modules the layers build, without the tail."""
    model = build_model(parse_spec(spec_of(layers, size, channels), "t.yaml"), None, 10).double().eval()
    return torch.nn.Sequential(*list(model.layers.children())[:-2])


def error_of(layers: str, size: int = 8, channels: int = 8) -> str:
    with pytest.raises(SpecError) as caught:
        infer(parse_spec(spec_of(layers, size, channels), "t.yaml"), None, 10)
    return str(caught.value)


def test_layer_norm_over_channels_is_torchvision_s_layer_norm_2d():
    ours = model_of("  - layer_norm: {eps: 1.0e-6}\n")
    theirs = TorchvisionLayerNorm2d(8, eps=1e-6).double()
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(dict(zip(ours.state_dict(), theirs.state_dict().values())))
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
    flat = model_of("  - global_avg_pool\n  - layer_norm\n")
    with torch.no_grad():
        pooled = x.mean((2, 3))
        torch.testing.assert_close(flat(x), torch.nn.functional.layer_norm(pooled, (8,)))


def test_group_norm_is_torch_s_and_its_groups_must_divide_the_channels():
    ours = model_of("  - group_norm: 4\n")
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), torch.nn.functional.group_norm(x, 4))
    assert "t.yaml:4:17: layers[0].groups: group_norm_1: groups 3 must divide the input channels 8" \
        in error_of("  - group_norm: 3\n")


def test_group_norm_with_one_value_per_group_is_refused_at_its_line():
    # torch raises for it even on one image in eval mode; found by `make fuzz`
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.nn.functional.group_norm(torch.randn(1, 8, 1, 1), 8)
    assert ("t.yaml:4:17: layers[0].groups: group_norm_1: each of its 8 groups would hold one value "
            "(8 channels of 1x1), which normalizes to 0") in error_of("  - group_norm: 8\n", size=1)
    assert model_of("  - group_norm: 4\n", size=1)(torch.randn(1, 8, 1, 1, dtype=torch.float64)).shape == (1, 8, 1, 1)


def test_layer_scale_starts_at_its_value_with_torchvision_s_shape():
    ours = model_of("  - layer_scale: 0.5\n")
    (weight,) = ours.parameters()  # the layer's own: the tail is cut off
    assert weight.shape == (8, 1, 1) and bool((weight == 0.5).all())
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), x * 0.5)


def test_drop_path_drops_whole_samples_in_training_only():
    ours = model_of("  - drop_path: 0.5\n")
    x = torch.ones(400, 8, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(ours(x), x)  # evaluation: identity
        torch.manual_seed(0)
        out = ours.train()(x)
    per_sample = out.flatten(1)
    kept = per_sample[:, 0] > 0
    assert torch.equal(per_sample[kept], torch.full_like(per_sample[kept], 2.0))  # divided by 1 - rate
    assert torch.equal(per_sample[~kept], torch.zeros_like(per_sample[~kept]))
    assert 150 < int(kept.sum()) < 250


def test_channel_split_and_shuffle_are_shufflenet_s():
    halves = model_of("  - parallel:\n      branches:\n        - [channel_split: {parts: 2, index: 1}]\n"
                      "        - [channel_split: 0]\n  - channel_shuffle: 2\n")
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        x1, x2 = x.chunk(2, dim=1)
        torch.testing.assert_close(halves(x), channel_shuffle(torch.cat([x2, x1], 1), 2))
    assert "layers[0].index: channel_split_1: index 2 is not one of the 2 parts (0 to 1)" \
        in error_of("  - channel_split: 2\n")
    assert "needs an image whose channels divide into 3 groups, got 8x8x8" in error_of("  - channel_shuffle: 3\n")


def test_adaptive_pooling_gives_its_size_at_any_input_size():
    for size in (1, 5, 16):
        ours = model_of("  - adaptive_avg_pool: 7\n", size=size)
        x = torch.randn(1, 8, size, size, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), torch.nn.functional.adaptive_avg_pool2d(x, 7))
    records = infer(parse_spec(spec_of("  - adaptive_max_pool: [3, 2]\n"), "t.yaml"), None, 10).records
    assert records[0].out_shape == (8, 3, 2)
