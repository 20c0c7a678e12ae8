"""The compiled SpecModel: plain torch behaviour (compile, channels_last, ONNX, determinism)
and the per-layer training options and data-dependent init the spec can ask for."""
import io

import pytest
import torch

from cnnspec.layers.augmentation import RandomCrop, RandomFlip, RandomTranslation
from cnnspec.layers.whiten import WhiteningConv
from cnnspec.models.compiler import build_model
from cnnspec.models.shapes import infer_shapes
from cnnspec.spec.reader import parse_spec

TINY = """
name: tiny
input: {channels: 3, height: 16, width: 16}
layers:
  - conv: {filters: 8, activation: relu}
  - bn
  - max_pool: 2
  - residual:
      activation: relu
      body:
        - conv: {filters: 16, stride: 2, bias: false}
        - bn
  - parallel:
      branches:
        - [conv: {filters: 4, kernel: 1}]
        - [conv: {filters: 4}]
  - global_avg_pool
  - dense: {units: num_classes, activation: softmax}
"""


def tiny(text=TINY, **kwargs):
    torch.manual_seed(0)
    return build_model(parse_spec(text, "tiny.yaml"), **kwargs)


def test_state_dict_keys_are_layer_names():
    keys = tiny().state_dict().keys()
    assert "layers.conv_1.weight" in keys and "layers.bn_1.running_var" in keys
    assert "layers.dense_1.weight" in keys


def test_final_softmax_is_folded_into_the_loss():
    model = tiny().eval()
    assert model.final_activation == "softmax"
    logits = model(torch.randn(4, 3, 16, 16))
    assert not torch.allclose(logits.sum(1), torch.ones(4))  # logits, not probabilities


def test_same_seed_same_model_and_output():
    x = torch.randn(2, 3, 16, 16)
    first, second = tiny().eval(), tiny().eval()
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(first(x), second(x))


def test_torch_compile_matches_eager():
    model = tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_channels_last_matches_contiguous():
    model = tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), expected,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_onnx_export_passes_the_checker():
    onnx = pytest.importorskip("onnx")
    model = tiny().eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), buffer, dynamo=False,
                      input_names=["images"], output_names=["logits"])
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == ["logits"]


OPTIONS = """
name: options
input: {channels: 3, height: 8, width: 8}
layers:
  - conv: {filters: 4, trainable: false}
  - conv: {filters: 4, l2: 0.5, lr_mult: 2, wd_mult: 0}
  - bn: {weight_trainable: false, lr_mult: 64}
  - flatten
  - dense: {units: num_classes, l2: 0.25}
"""


def test_trainable_false_freezes_the_layer():
    model = tiny(OPTIONS)
    assert not any(p.requires_grad for p in model.layers.conv_1.parameters())
    assert model.layers.conv_2.weight.requires_grad
    assert not model.layers.bn_1.weight.requires_grad and model.layers.bn_1.bias.requires_grad


def test_l2_reaches_regularization_loss():
    model = tiny(OPTIONS)
    expected = 0.5 * model.layers.conv_2.weight.pow(2).sum() + 0.25 * model.layers.dense_1.weight.pow(2).sum()
    torch.testing.assert_close(model.regularization_loss(), expected)
    assert tiny().regularization_loss().item() == 0.0


def test_lr_and_wd_multipliers_reach_param_groups():
    model = tiny(OPTIONS)
    groups = model.param_groups(lr=0.1, weight_decay=0.01)
    by_param = {id(p): group for group in groups for p in group["params"]}
    conv = by_param[id(model.layers.conv_2.weight)]
    assert conv["lr"] == pytest.approx(0.2) and conv["weight_decay"] == 0
    assert by_param[id(model.layers.bn_1.bias)]["lr"] == pytest.approx(6.4)
    assert by_param[id(model.layers.dense_1.weight)]["lr"] == pytest.approx(0.1)
    frozen = {id(p) for p in model.layers.conv_1.parameters()} | {id(model.layers.bn_1.weight)}
    assert not frozen & set(by_param)
    torch.optim.SGD(groups, lr=0.1)  # the groups are what an optimizer takes


def test_frozen_layers_keep_their_batch_norm_statistics():
    text = OPTIONS.replace("  - bn: {weight_trainable: false, lr_mult: 64}", "  - bn: {trainable: false}")
    model = tiny(text).train()
    before = model.layers.bn_1.running_mean.clone()
    model(torch.randn(4, 3, 8, 8))
    assert not model.layers.bn_1.training and torch.equal(before, model.layers.bn_1.running_mean)


def test_a_frozen_layer_leaves_modules_of_its_name_inside_other_layers_training():
    """A frozen spec layer named bn1 runs in inference mode; a trainable backbone's own bn1
    modules do not: only the spec's layers are matched by name."""
    text = """
name: ported
layers:
  - bn: {name: bn1, trainable: false}
  - backbone: {model: resnet18, pooling: avg, name: base}
  - dense: num_classes
"""
    model = build_model(parse_spec(text, "ported.yaml"), (3, 32, 32), 10, load_weights=False).train()
    assert not model.layers.bn1.training
    assert model.layers.base.features.bn1.training and model.layers.base.features.layer1[0].bn1.training


def test_augmentation_acts_only_in_training():
    text = """
name: aug
input: {channels: 3, height: 12, width: 12}
layers:
  - random_flip: horizontal_and_vertical
  - random_translation: {height: 0.2}
  - random_crop: 2
  - flatten
  - dense: num_classes
"""
    model = tiny(text)
    x = torch.randn(64, 3, 12, 12)
    augment = torch.nn.Sequential(*list(model.layers)[:3])
    torch.manual_seed(1)
    changed = augment.train()(x)
    assert changed.shape == x.shape
    assert torch.equal(augment.eval()(x), x)
    moved = (changed != x).flatten(1).any(1)
    assert 0 < moved.sum() <= 64  # each image draws its own transform
    torch.manual_seed(1)
    assert torch.equal(augment.train()(x), changed)  # torch RNG: reproducible


def test_random_translation_shifts_whole_images():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    torch.manual_seed(0)
    shifted = RandomTranslation(2, 2, fill="zeros").train()(x)
    for image, original in zip(shifted, x):
        # Every output pixel that is not fill comes from the same (dy, dx) offset.
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(image, torch.roll(original, (dy, dx), (1, 2)) * mask(dy, dx))]
        assert found


def mask(dy, dx):
    keep = torch.zeros(1, 6, 6)
    keep[:, max(dy, 0):6 + min(dy, 0), max(dx, 0):6 + min(dx, 0)] = 1
    return keep


def test_random_flip_flips_whole_images():
    x = torch.randn(32, 3, 4, 4)
    out = RandomFlip("horizontal").train()(x)
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_random_crop_keeps_size():
    x = torch.randn(5, 3, 8, 8)
    assert RandomCrop(4, "zeros").train()(x).shape == x.shape


def whitened_patches(weight, images, k):
    patches = images.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, weight.shape[1] * k * k)
    return patches @ weight.flatten(1).T.double()


def test_whitening_decorrelates_training_patches():
    """The whitening conv's responses on the training patches have covariance ~ I."""
    torch.manual_seed(0)
    mixing = torch.randn(3, 3) + 2 * torch.eye(3)  # strongly correlated channels
    images = torch.einsum("ij,njhw->nihw", mixing, torch.randn(64, 3, 16, 16))
    images = images + torch.nn.functional.avg_pool2d(images, 3, 1, 1)  # correlated neighbours
    layer = WhiteningConv(3, kernel=2, eps=1e-6)
    layer.init_from_data(images)
    responses = whitened_patches(layer.weight.double(), images.double(), 2)
    half = responses.shape[1] // 2
    positive = responses[:, :half]
    covariance = positive.T @ positive / len(positive)
    torch.testing.assert_close(covariance, torch.eye(half, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(responses[:, half:], -positive)  # the negatives
    # The same response the conv itself gives (bias aside).
    conv_out = torch.nn.functional.conv2d(images, layer.weight)
    assert conv_out.shape == (64, 24, 15, 15)


def test_init_from_data_feeds_the_whitening_layer_its_own_input():
    text = """
name: w
input: {channels: 3, height: 8, width: 8}
layers:
  - scale: 2.0
  - whiten
  - flatten
  - dense: num_classes
"""
    model = tiny(text)
    images = torch.randn(16, 3, 8, 8)
    assert model.init_from_data(images) is True
    reference = WhiteningConv(3)
    reference.init_from_data(images * 2.0)  # what the layer sees: the scaled images
    torch.testing.assert_close(model.layers.whiten_1.weight, reference.weight)
    assert not model.layers.whiten_1.weight.requires_grad and model.training
    assert tiny().init_from_data(images[:, :, :16]) is False


def test_dirac_init_passes_channels_through():
    text = """
name: d
input: {channels: 4, height: 6, width: 6}
layers:
  - conv: {filters: 8, bias: false, init: dirac}
  - flatten
  - dense: num_classes
"""
    model = tiny(text)
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(model.layers.conv_1(x)[:, :4], x)


def test_same_padding_with_stride_follows_tensorflow():
    """Output ceil(in / stride); the odd padding pixel goes at the bottom and right."""
    text = """
name: s
input: {channels: 1, height: 8, width: 8}
layers:
  - conv: {filters: 1, kernel: 3, stride: 2, padding: same, bias: false}
  - flatten
  - dense: num_classes
"""
    shapes = {node.name: out for node, _, out in infer_shapes(parse_spec(text, "s.yaml"))}
    assert shapes["conv_1"] == (1, 4, 4)
    model = tiny(text)
    x = torch.randn(1, 1, 8, 8)
    weight = model.layers.conv_1.weight
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), weight, stride=2)
    torch.testing.assert_close(model.layers[:2](x), expected)


def test_input_shape_defaults_to_the_spec_then_32():
    model = tiny()
    assert model.input_shape == (3, 16, 16) and model.num_classes == 10
    text = TINY.replace("input: {channels: 3, height: 16, width: 16}\n", "")
    assert tiny(text, num_classes=5).input_shape == (3, 32, 32)
