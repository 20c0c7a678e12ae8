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
