"""The spec language's newer constructs: activations, identity, empty branches, gates and
broadcasting merges, expressions, PyTorch-style padding, warnings, custom layers."""
from __future__ import annotations

import pytest
import torch

from cnnspec.compiler import build_model
from cnnspec.errors import SpecError
from cnnspec.shapes import infer
from cnnspec.spec import parse_spec


def spec_of(layers: str, blocks: str = "", input_line: str = "input: {channels: 3, height: 8, width: 8}") -> str:
    return f"name: t\n{input_line}\n{blocks}layers:\n{layers}"


def error_of(text: str, classes: int = 10) -> str:
    with pytest.raises(SpecError) as caught:
        infer(parse_spec(text, "t.yaml"), None, classes)
    return str(caught.value)


# ---------------------------------------------------------------- activations and suggestions

@pytest.mark.parametrize("name, reference", [
    ("relu6", torch.nn.functional.relu6), ("hardswish", torch.nn.functional.hardswish),
    ("hardsigmoid", torch.nn.functional.hardsigmoid), ("mish", torch.nn.functional.mish),
    ("silu", torch.nn.functional.silu)])
def test_activation_computes_torch_s_function(name, reference):
    model = build_model(parse_spec(spec_of(f"  - activation: {name}\n  - flatten\n  - dense: num_classes"),
                                   "t.yaml")).eval()
    x = torch.randn(2, 3, 8, 8) * 4
    activation = model.layers.activation_1
    assert torch.equal(activation(x), reference(x))


@pytest.mark.parametrize("written, suggested", [
    ("ReLU", "relu"), ("ReLU6", "relu6"), ("Hard_Swish", "hardswish"), ("swish", "silu"),
    ("HardSigmoid", "hardsigmoid")])
def test_misspelt_activation_is_refused_with_a_suggestion(written, suggested):
    message = error_of(spec_of(f"  - conv: {{filters: 4, activation: {written}}}\n  - flatten\n  - dense: num_classes"))
    assert f"'{written}' is not one of" in message and f"(did you mean '{suggested}'?)" in message
    assert message.startswith("t.yaml:4:")


def test_relu6_is_its_own_function_not_relu():
    spec = parse_spec(spec_of("  - conv: {filters: 4, activation: relu6}\n  - flatten\n  - dense: num_classes"), "t.yaml")
    model = build_model(spec)
    assert isinstance(model.layers.conv_1_relu6, torch.nn.ReLU6)


# ---------------------------------------------------------------- identity and empty branches

def test_an_empty_branch_concatenates_the_input_itself():
    spec = parse_spec(spec_of("""  - parallel:
      branches:
        - []
        - [conv: {filters: 5, name: grow}]
  - flatten
  - dense: num_classes"""), "t.yaml")
    model = build_model(spec).eval()
    x = torch.randn(2, 3, 8, 8)
    y = model.layers.parallel_1(x)
    assert y.shape == (2, 8, 8, 8)
    assert torch.equal(y[:, :3], x) and torch.equal(y[:, 3:], model.layers.parallel_1.branches[1](x))


def test_identity_layer_passes_through():
    spec = parse_spec(spec_of("  - identity\n  - flatten\n  - dense: num_classes"), "t.yaml")
    model = build_model(spec)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(model.layers.identity_1(x), x)


def test_an_empty_body_says_which_list_may_be_empty():
    message = error_of(spec_of("  - residual: {body: []}\n  - flatten\n  - dense: num_classes"))
    assert message.startswith("t.yaml:4:")
    assert "layers[0].residual.body: an empty layer list" in message and "parallel branch" in message


# ---------------------------------------------------------------- gates and broadcasting merges

SQUEEZE_EXCITE = """  - conv: {filters: 6, name: features}
  - parallel:
      merge: multiply
      branches:
        - []
        - - global_avg_pool: {keep_dims: true}
          - conv: {filters: 2, kernel: 1, activation: relu, name: fc1}
          - conv: {filters: 6, kernel: 1, activation: sigmoid, name: fc2}
  - flatten
  - dense: num_classes"""


def test_squeeze_excite_gate_scales_each_channel_like_a_hand_written_one():
    model = build_model(parse_spec(spec_of(SQUEEZE_EXCITE), "t.yaml")).eval()
    x = torch.randn(2, 3, 8, 8)
    layers = model.layers
    features = layers.features(x)
    gate = torch.sigmoid(layers.parallel_1.branches[1].fc2(
        torch.relu(layers.parallel_1.branches[1].fc1(features.mean((2, 3), keepdim=True)))))
    assert gate.shape == (2, 6, 1, 1)
    assert torch.allclose(layers.parallel_1(features), features * gate)
    records = {r.node.name: r for r in infer(parse_spec(spec_of(SQUEEZE_EXCITE), "t.yaml"), None, 10).records}
    assert records["parallel_1"].out_shape == (6, 8, 8) and records["global_avg_pool_1"].out_shape == (6, 1, 1)


def test_add_broadcasts_a_per_position_map():
    text = spec_of("""  - parallel:
      merge: add
      branches:
        - []
        - [conv: {filters: 1, kernel: 1}]
  - flatten
  - dense: num_classes""")
    model = build_model(parse_spec(text, "t.yaml"))
    assert model.layers.parallel_1(torch.randn(2, 3, 8, 8)).shape == (2, 3, 8, 8)


@pytest.mark.parametrize("merge, gate, expected", [
    ("multiply", "- conv: {filters: 4, kernel: 1}", "cannot multiply branches of shapes 6x8x8 and 4x8x8"),
    ("add", "- global_avg_pool", "cannot add branches of shapes 6x8x8 and 6: each size must be equal "
                                 "or 1; a global pool with keep_dims: true gives a Cx1x1 gate")])
def test_shapes_that_do_not_broadcast_are_named(merge, gate, expected):
    message = error_of(spec_of(f"""  - conv: 6
  - parallel:
      merge: {merge}
      branches:
        - []
        - {gate.removeprefix('- ').join(['[', ']'])}
  - flatten
  - dense: num_classes"""))
    assert message.startswith("t.yaml:6:14: layers[1].merge: parallel_1: ") and expected in message


# ---------------------------------------------------------------- expressions

from cnnspec.expressions import make_divisible  # noqa: E402

DENSE_AND_MOBILE = """blocks:
  dense_layer:
    args: {growth: 4}
    layers:
      - parallel:
          branches:
            - []
            - - conv: {filters: $growth * 4, kernel: 1, name: bottleneck}
              - conv: {filters: $growth}
  transition:
    layers:
      - conv: {filters: $in_channels // 2, kernel: 1}
  inverted:
    args: {expand: 6, out: null}
    layers:
      - conv:
          filters: make_divisible($in_channels * $expand, 8)
          kernel: 1
          name: expand
      - conv:
          filters: make_divisible($in_channels * $expand, 8)
          groups: make_divisible($in_channels * $expand, 8)
          name: depthwise
      - conv: {filters: $out, kernel: 1}
"""


def test_expressions_compute_widths_from_arguments_and_in_channels():
    text = spec_of("""  - conv: make_divisible(30, 8)
  - use: {block: dense_layer, growth: 3}
  - use: transition
  - use: {block: inverted, out: 2 * (3 + 5)}
  - global_avg_pool
  - dense: num_classes""", DENSE_AND_MOBILE)
    spec = parse_spec(text, "t.yaml")
    shapes = {r.node.name: r.out_shape for r in infer(spec, None, 10).records}
    assert shapes["conv_1"][0] == 32                    # make_divisible(30, 8)
    assert shapes["bottleneck"][0] == 12                # $growth * 4
    assert shapes["parallel_1"][0] == 35                # 32 + 3
    assert shapes["conv_3"][0] == 17                     # $in_channels // 2 of 35
    assert shapes["expand"][0] == shapes["depthwise"][0] == make_divisible(17 * 6, 8) == 104
    assert shapes["conv_4"][0] == 16                    # 2 * (3 + 5)
    model = build_model(spec)
    assert model.layers.inverted_1.depthwise.groups == 104
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_in_channels_is_the_input_of_each_call():
    text = spec_of("""  - use: transition
  - use: transition
  - flatten
  - dense: num_classes""", DENSE_AND_MOBILE, "input: {channels: 16, height: 4, width: 4}")
    records = infer(parse_spec(text, "t.yaml"), None, 10).records
    assert [r.out_shape[0] for r in records if r.node.type == "conv"] == [8, 4]


@pytest.mark.parametrize("value, torchvision_value", [(16 * 0.75, 16), (32 * 1.4, 48), (3, 8), (100, 104), (90, 88)])
def test_make_divisible_is_torchvision_s(value, torchvision_value):
    from torchvision.models._utils import _make_divisible

    assert make_divisible(value, 8) == _make_divisible(value, 8) == torchvision_value


@pytest.mark.parametrize("written, column, message", [
    ("$growth * * 4", 35, "'$growth * * 4': expected a number, $argument, function or '(', found '*'"),
    ('"make_divisble($growth, 8)"', 26, "unknown function 'make_divisble' (did you mean 'make_divisible'?)"),
    ("make_divisible($growth, 8)", 47, "inside { } a comma ends the value: quote the expression"),
    ("$grwth + 1", 25, "'$grwth' is not an argument of block 'b' (did you mean 'growth'?)"),
    ("$growth // (2 - 2)", 33, "division by zero (4 // 0)"),
    ("$growth * 1.5 + 0.5", 25, "6.5 is not an integer >= 1"),
    ("$in_channels // 64", 25, "'$in_channels // 64' is 0 here: 0 is less than the minimum of 1"),
    ("$act * 2", 25, "$act is 'x', not a number"),
])
def test_a_bad_expression_points_at_its_column(written, column, message):
    text = spec_of("""  - use: {block: b}
  - global_avg_pool
  - dense: num_classes""", f"""blocks:
  b:
    args: {{growth: 4, act: x}}
    layers:
      - conv: {{filters: {written}, kernel: 1}}
""")
    found = error_of(text)
    assert found.startswith(f"t.yaml:7:{column}: ") and message in found, found


def test_arithmetic_on_plain_numbers_works_outside_blocks_and_in_channels_does_not():
    assert infer(parse_spec(spec_of("  - conv: 4 * (2 + 1)\n  - flatten\n  - dense: num_classes"), "t.yaml"),
                 None, 10).records[0].out_shape == (12, 8, 8)
    message = error_of(spec_of("  - conv: $in_channels * 2\n  - flatten\n  - dense: num_classes"))
    assert message.startswith("t.yaml:4:11: ") and "can only be used inside a block" in message


def test_in_channels_cannot_be_declared_as_an_argument():
    message = error_of(spec_of("  - use: b\n  - flatten\n  - dense: num_classes",
                               "blocks:\n  b:\n    args: {in_channels: 3}\n    layers: [identity]\n"))
    assert message.startswith("t.yaml:") and "'in_channels' is reserved" in message
