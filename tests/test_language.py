"""The spec language's newer constructs: activations, identity, empty branches, gates and
broadcasting merges, expressions, PyTorch-style padding, warnings, custom layers."""
from __future__ import annotations

import time

import jsonschema
import pytest
import torch

from cnnspec.errors import SpecError
from cnnspec.models.compiler import build_model
from cnnspec.models.shapes import infer
from cnnspec.spec.reader import parse_spec
from cnnspec.version import cnnspec_version


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


@pytest.mark.parametrize("layer, hint", [
    # Keras' argument names, a value written as a key, a word of an option that also takes numbers
    ("max_pool: {pool_size: 2}", "unknown key 'pool_size' (did you mean 'kernel'?)"),
    ("conv: {filters: 4, kernel_regularizer: 0.01}", "unknown key 'kernel_regularizer' (did you mean 'l2'?)"),
    ("conv: {filters: 4, use_bias: false}", "unknown key 'use_bias' (did you mean 'bias'?)"),
    ("bn: {epsilon: 0.001}", "unknown key 'epsilon' (did you mean 'eps'?)"),
    ("conv: {filters: 4, input_shape: [32, 32, 3]}", "a spec's input is its top-level `input: {channels: 3"),
    ("conv: {filters: 4, relu: true}", "(relu is a value of 'activation': write activation: relu)"),
    ("conv: {filters: 4, same: true}", "(same is a value of 'padding': write padding: same)"),
    ("conv: {filters: 4, padding: SAME}", "'SAME' is not same, valid, symmetric, an integer >= 0 or [h, w] "
                                          "(did you mean 'same'?)"),
    ("conv: {filters: num_class}", "(did you mean 'num_classes'?)"),
    ("max_pool: {padding: vaild}", "(did you mean 'valid'?)"),
    ("conv: {filters: 4, kernel: 3x3}", "got '3x3' (write [3, 3])"),
    ("max_pool: {kernel: '(2, 2)'}", "got '(2, 2)' (write [2, 2])"),
    ("random_translation: 0.05", "not 0.05 (it has no shorthand: write random_translation: {height: 0.05})"),
    ("repeat: 3", "not 3 (it has no shorthand: write repeat: {n: 3, layers: ...})"),
])
def test_a_keras_port_s_near_misses_get_the_right_word(layer, hint):
    message = error_of(spec_of(f"  - {layer}\n  - flatten\n  - dense: num_classes"))
    assert hint in message and message.startswith("t.yaml:4:"), message


@pytest.mark.parametrize("kernel", [" " * 100_000 + "y", "( 3x3" + " " * 100_000 + "y"], ids=["before", "after"])
def test_the_pair_hint_takes_linear_time_on_a_long_value(kernel):
    # the hint's pattern took time quadratic in the spaces: 100,000 of them about a minute
    started = time.monotonic()
    message = error_of(spec_of(f"  - conv: {{filters: 4, kernel: '{kernel}'}}\n  - flatten\n  - dense: num_classes"))
    assert time.monotonic() - started < 2 and "expected integer or array" in message and "write [" not in message


@pytest.mark.parametrize("tail, fix", [
    ("  - conv: 4", "(end with flatten (or global_avg_pool), then dense: num_classes)"),
    ("  - flatten\n  - dense: 7", "(write units: num_classes)"),
    ("  - flatten\n  - dropout: 0.5", "(end with dense: num_classes)"),
    # Keras' ending: the dense's units are what is wrong, not a missing dense
    ("  - flatten\n  - dense: 7\n  - activation: softmax", "(write units: num_classes in dense_1)"),
    ("  - flatten\n  - dense: 7\n  - dropout: 0.5", "(write units: num_classes in dense_1)"),
])
def test_a_model_that_does_not_end_in_the_logits_is_told_what_ends_one(tail, fix):
    message = error_of(spec_of(tail))
    assert "one logit per class " + fix in message, message


def test_relu6_is_its_own_function_not_relu():
    spec = parse_spec(spec_of("  - conv: {filters: 4, activation: relu6}\n  - flatten\n  - dense: num_classes"),
                      "t.yaml")
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

from cnnspec.spec.expressions import make_divisible  # noqa: E402

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


def test_outside_blocks_in_channels_is_the_layer_s_own_input():
    records = infer(parse_spec(spec_of("""  - conv: 4 * (2 + 1)
  - conv: $in_channels * 2
  - use: {block: transition}
  - use: {block: inverted, out: $in_channels, expand: 1}
  - flatten
  - dense: num_classes""", DENSE_AND_MOBILE), "t.yaml"), None, 10).records
    assert [r.out_shape[0] for r in records if r.node.type in ("conv", "group")] == [12, 24, 12, 12, 12, 16, 16, 12]
    message = error_of(spec_of("  - conv: $width * 2\n  - flatten\n  - dense: num_classes"))
    assert message.startswith("t.yaml:4:11: ") and "'$width * 2' can only be used inside a block" in message


def test_in_channels_cannot_be_declared_as_an_argument():
    message = error_of(spec_of("  - use: b\n  - flatten\n  - dense: num_classes",
                               "blocks:\n  b:\n    args: {in_channels: 3}\n    layers: [identity]\n"))
    assert message.startswith("t.yaml:") and "'in_channels' is reserved" in message


# ---------------------------------------------------------------- padding, warnings, --strict

from pathlib import Path  # noqa: E402

from cnnspec import cli  # noqa: E402
from cnnspec.models.summary import summarize  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kernel, dilation", [(3, 1), (5, 1), (3, 2), (7, 1)])
def test_symmetric_padding_is_torch_s_conv_padding(kernel, dilation):
    text = spec_of(f"  - conv: {{filters: 4, kernel: {kernel}, stride: 2, dilation: {dilation}, padding: symmetric}}\n"
                   "  - flatten\n  - dense: num_classes", input_line="input: {channels: 3, height: 15, width: 15}")
    model = build_model(parse_spec(text, "t.yaml")).eval()
    conv = model.layers.conv_1
    reference = torch.nn.Conv2d(3, 4, kernel, stride=2, dilation=dilation, padding=dilation * (kernel - 1) // 2)
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(1, 3, 15, 15)
    assert torch.equal(model.layers[:1](x), reference(x))  # no separate pad module: one conv, same numbers
    assert infer(parse_spec(text, "t.yaml"), None, 10).records[0].out_shape == tuple(reference(x).shape[1:])


def warnings_of(text: str) -> list[str]:
    return [str(w) for w in infer(parse_spec(text, "t.yaml"), None, 10).warnings]


def test_uneven_same_padding_on_a_strided_conv_is_a_warning():
    found = warnings_of(spec_of("  - conv: {filters: 4, stride: 2}\n  - flatten\n  - dense: num_classes"))
    assert len(found) == 1 and found[0].startswith("t.yaml:4:")
    assert "conv_1: padding same with stride 2x2 on 3x8x8 pads 0/1 rows" in found[0]
    assert "padding: symmetric" in found[0]
    symmetric = "  - conv: {filters: 4, stride: 2, padding: symmetric}\n  - flatten\n  - dense: num_classes"
    assert warnings_of(spec_of(symmetric)) == []
    assert warnings_of(spec_of("  - conv: {filters: 4, stride: 1}\n  - flatten\n  - dense: num_classes")) == []


def test_keras_style_bn_momentum_is_a_warning():
    (found,) = warnings_of(spec_of("  - bn: {momentum: 0.99}\n  - flatten\n  - dense: num_classes"))
    assert found.startswith("t.yaml:4:") and "layers[0].momentum: bn_1: momentum 0.99" in found
    assert "Keras' momentum 0.99 is 0.01 here" in found


AUTO_PROJECTION = spec_of("""  - residual:
      activation: relu
      body:
        - conv: {filters: 8, stride: 2, padding: symmetric}
        - bn
  - flatten
  - dense: num_classes""")


def test_an_automatic_projection_is_a_warning_and_a_summary_row():
    (found,) = warnings_of(AUTO_PROJECTION)
    projection = 3 * 8 + 2 * 8 + 2 * 8  # 1x1 conv without bias, BN weights, BN statistics
    assert f"residual_1: shortcut auto adds a projection (1x1 conv + bn, {projection:,} params)" in found
    assert "because the body turns 3x8x8 into 8x4x4" in found
    summary = summarize(parse_spec(AUTO_PROJECTION, "t.yaml"))
    rows = {row.name: row for row in summary.rows}
    assert rows["shortcut (projection)"].params == projection and rows["shortcut (projection)"].depth == 1
    assert rows["residual_1"].params == rows["body"].params + projection
    model = build_model(parse_spec(AUTO_PROJECTION, "t.yaml"))
    assert sum(p.numel() for p in model.layers.residual_1.shortcut.parameters()) + 16 == projection
    assert [str(warning) for warning in model.spec_warnings] == [found]  # the train stage prints them
    explicit = AUTO_PROJECTION.replace("activation: relu\n", "activation: relu\n      shortcut: projection\n")
    assert warnings_of(explicit) == []


def write(tmp_path, text: str) -> str:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return str(path)


def test_validate_prints_warnings_and_strict_fails(tmp_path, capsys):
    path = write(tmp_path, AUTO_PROJECTION)
    assert cli.main(["validate", path]) == 0
    out, err = capsys.readouterr()
    assert out == f"ok: {path} (1 warning)\n" and err.startswith(f"warning: {path}:4:")
    assert cli.main(["validate", "--strict", path]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {path}:4:") and "adds a projection" in err
    assert cli.main(["summary", "--strict", path]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "adds a projection" in err


def test_every_shipped_spec_is_clean_under_strict(capsys):
    specs = sorted(str(path) for path in (ROOT / "specs").glob("*.yaml"))
    assert cli.main(["validate", "--strict", *specs]) == 0, capsys.readouterr().err


# ---------------------------------------------------------------- summary

def test_summary_labels_parts_collapses_repeats_and_limits_depth():
    text = spec_of("""  - conv: {filters: 6, name: features}
  - repeat:
      n: 3
      layers:
        - parallel:
            merge: multiply
            branches:
              - []
              - [global_avg_pool: {keep_dims: true}, conv: {filters: 6, kernel: 1, activation: sigmoid}]
  - flatten
  - dense: num_classes""")
    summary = summarize(parse_spec(text, "t.yaml"))
    table = summary.table()
    assert "\nparallel_1..parallel_3 (parallel) x3 " in table
    assert "\n  branch 0 (the input) " in table and "\n  branch 1 " in table
    gate = 6 * 6 + 6
    assert any(line.startswith("parallel_1..parallel_3") and line.endswith(f"  {3 * gate:,}")
               for line in table.splitlines())
    assert len([row for row in summary.rows if row.type == "parallel"]) == 3  # rows stay one per layer
    assert "branch" not in summary.table(depth=0) and "parallel_1..parallel_3" in summary.table(depth=0)
    assert "parallel_2 (parallel)" in summary.table(collapse=False)


@pytest.mark.parametrize("macs, text", [(4_548_608, "4.55 M"), (3_663_250_000, "3.66 G"), (950, "950"),
                                        (12_500, "12.50 K")])
def test_mac_counts_read_in_k_m_g(macs, text):
    from cnnspec.models.summary import count_text

    assert count_text(macs) == text


def test_summary_depth_option_on_the_command_line(capsys):
    assert cli.main(["summary", str(ROOT / "specs" / "resnet18_cifar.yaml"), "--depth", "0"]) == 0
    out = capsys.readouterr().out
    assert "stage_2 (stage)" in out and "basic_block" not in out and "Total params: 11,183,562" in out


# ---------------------------------------------------------------- layer types from user code

import sys  # noqa: E402

from cnnspec.layers import registry as layer_registry  # noqa: E402
from cnnspec.layers.geometry import shape_free  # noqa: E402
from cnnspec.layers.reshape import build_identity  # noqa: E402

PLUGIN = ROOT / "examples" / "space_to_depth.py"
PLUGIN_SPEC = spec_of("  - conv: 6\n  - space_to_depth: 2\n  - global_avg_pool\n  - dense: num_classes")


@pytest.fixture
def registry_restored():
    """Registering is process-wide: put the registry (rules and schemas) back afterwards."""
    saved = (dict(layer_registry.LAYERS), dict(layer_registry.LAYER_SCHEMAS), set(sys.modules))
    yield
    for live, before in zip((layer_registry.LAYERS, layer_registry.LAYER_SCHEMAS), saved):
        live.clear()
        live.update(before)
    layer_registry.schema_changed()
    for name in set(sys.modules) - saved[2]:
        if name.startswith("cnnspec_plugin_"):
            del sys.modules[name]


def test_an_unregistered_type_is_an_unknown_layer_type(tmp_path, capsys):
    assert cli.main(["validate", write(tmp_path, PLUGIN_SPEC)]) == 1
    assert "layers[1]: unknown layer type 'space_to_depth' (a layer type from your own code needs " \
           "--plugin FILE, or model.plugins in params.yaml; one from a newer cnnspec than this one, " \
           f"{cnnspec_version()}, needs that version)" in capsys.readouterr().err


def test_a_plugin_layer_is_checked_like_a_built_in_one(tmp_path, capsys, registry_restored):
    from tests.layerchecks import model_counts, module_of, spec_for

    path = write(tmp_path, PLUGIN_SPEC)
    assert cli.main(["validate", "--plugin", str(PLUGIN), path]) == 0
    # the registry test's own check, on the plugin's x-example: inferred shapes = real ones
    spec = parse_spec(spec_for("space_to_depth"), "<space_to_depth>")
    records = infer(spec, (3, 32, 32), 5).records
    model = build_model(spec, (3, 32, 32), 5).eval()
    record = next(r for r in records if r.node.type == "space_to_depth")
    x = torch.randn(2, 4, 32, 32)
    moved = module_of(model, record.node.name)(x)
    assert tuple(moved.shape[1:]) == record.out_shape == (16, 16, 16)
    assert torch.equal(moved[:, :4, 0, 0].flatten(), x[:, 0, :2, :2].flatten(1).flatten())
    summary = summarize(spec, (3, 32, 32), 5)
    assert (summary.trainable, summary.non_trainable) == model_counts(model)
    # its options are checked and its shape rule's errors point at the spec
    assert cli.main(["validate", write(tmp_path, PLUGIN_SPEC.replace("depth: 2", "depth: 3"))]) == 1
    assert "t.yaml:5:21: layers[1].block: space_to_depth_1: needs an image whose height and width divide by 3" \
        in capsys.readouterr().err
    assert cli.main(["validate", write(tmp_path, PLUGIN_SPEC.replace("depth: 2", "depth: {blok: 3}"))]) == 1
    assert "unknown key 'blok' (did you mean 'block'?)" in capsys.readouterr().err


def test_registration_refuses_a_bad_schema_or_a_taken_name(registry_restored):
    rule = layer_registry.LayerRule(shape_free, build_identity)
    with pytest.raises(ValueError, match="must be new"):
        layer_registry.register_layer("block", rule, schema={})
    with pytest.raises(ValueError, match="unknown keys"):
        layer_registry.register_layer("noop", rule, schema={"propertys": {}})
    with pytest.raises(ValueError, match="options every layer has already"):
        layer_registry.register_layer("noop", rule, schema={"properties": {"name": {"type": "string"}}})
    with pytest.raises(jsonschema.SchemaError, match="integr"):  # a plugin's options are a JSON Schema
        layer_registry.register_layer("noop", rule, schema={"properties": {"size": {"type": "integr"}}})
    assert "noop" not in layer_registry.LAYERS


def test_a_missing_plugin_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["validate", "--plugin", "no_such_plugin_module", write(tmp_path, PLUGIN_SPEC)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: plugin no_such_plugin_module: No module named")


def test_params_model_plugins_are_loaded_with_the_model_section(tmp_path, registry_restored):
    from cnnspec.pipeline.params import load_params

    params = tmp_path / "params.yaml"
    params.write_text(f"model:\n  spec: {write(tmp_path, PLUGIN_SPEC)}\n  plugins: [{PLUGIN}]\n")
    assert load_params(params, ["model"])["model"]["plugins"] == [str(PLUGIN)]
    assert "space_to_depth" in layer_registry.LAYERS
    infer(parse_spec(PLUGIN_SPEC, "t.yaml"), None, 10)


def test_spatial_attention_gate_weighs_every_position_like_cbam():
    text = spec_of("""  - conv: {filters: 6, name: features}
  - parallel:
      merge: multiply
      branches:
        - []
        - - parallel:
              branches:
                - [global_avg_pool: {over: channels}]
                - [global_max_pool: {over: channels}]
          - conv: {filters: 1, kernel: 7, padding: symmetric, activation: sigmoid, name: attention}
  - flatten
  - dense: num_classes""")
    spec = parse_spec(text, "t.yaml")
    shapes = {r.node.name: r.out_shape for r in infer(spec, None, 10).records}
    assert shapes["global_avg_pool_1"] == (1, 8, 8) and shapes["parallel_2"] == (2, 8, 8)
    assert shapes["parallel_1"] == (6, 8, 8)
    model = build_model(spec).eval()
    features = torch.randn(2, 6, 8, 8)
    attention = model.layers.parallel_1.branches[1].attention
    pooled = torch.cat([features.mean(1, keepdim=True), features.amax(1, keepdim=True)], 1)
    expected = features * torch.sigmoid(attention(pooled))
    assert torch.allclose(model.layers.parallel_1(features), expected)


def test_gates_export_like_any_module():
    """Exports must trace the new modules: no Python-side branching on data in forward."""
    model = build_model(parse_spec(spec_of(SQUEEZE_EXCITE), "t.yaml")).eval()
    x = torch.randn(2, 3, 8, 8)
    exported = torch.export.export(model, (x,))
    assert torch.allclose(exported.module()(x), model(x))


def test_an_argument_default_may_be_an_expression_over_the_call():
    text = spec_of("""  - use: {block: bottleneck, out: 12}
  - use: bottleneck
  - flatten
  - dense: num_classes""", """blocks:
  bottleneck:
    args: {out: $in_channels, squeeze: "max(1, $out // 4)"}
    layers:
      - conv: {filters: $squeeze, kernel: 1}
      - conv: {filters: $out, kernel: 1}
""", "input: {channels: 16, height: 4, width: 4}")
    records = infer(parse_spec(text, "t.yaml"), None, 10).records
    assert [r.out_shape[0] for r in records if r.node.type == "conv"] == [3, 12, 3, 12]


def test_a_negative_depth_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["summary", str(ROOT / "specs" / "simcnn.yaml"), "--depth", "-1"])
    assert exit_info.value.code == 2 and "--depth: expected a number >= 0, not -1" in capsys.readouterr().err


@pytest.mark.parametrize("text, value", [
    ("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("-3 // 2", -2), ("7 % 4", 3), ("10 - 4 - 3", 3),
    ("64 // 2 // 2", 16), ("min(3, 5, 1)", 1), ("max(1, 6 // 4)", 1), ("round(2.5)", 2), ("round(3.5)", 4),
    ("ceil(7 / 2)", 4), ("floor(7 / 2)", 3), ("0.5 * 64", 32), ("make_divisible(37, 8)", 40), ("3 / 2", 1.5),
    ("((4))", 4), ("-(8)", -8), ("2e1 * 2", 40), ("1e-3", 0.001)])
def test_expression_grammar_and_values(text, value):
    from cnnspec.spec.expressions import evaluate, is_expression, parse

    assert is_expression(text)
    result = evaluate(parse(text))
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize("text, offset, message", [
    ("round(1, 2)", 0, "round takes 1 arguments, got 2"), ("2 +", 3, "found the end"),
    ("(2 + 3", 6, "expected ')'"), ("2 3", 2, "expected an operator, found '3'"),
    ("2 ^ 3", 2, "unexpected character '^'"),
    ("eval(1)", 0, "unknown function 'eval'")])
def test_expression_errors_carry_the_offset(text, offset, message):
    from cnnspec.spec.expressions import ExpressionError, parse

    with pytest.raises(ExpressionError) as caught:
        parse(text)
    assert caught.value.offset == offset and message in caught.value.message


@pytest.mark.parametrize("word", ["same", "valid", "symmetric", "num_classes", "relu6", "horizontal_and_vertical",
                                  "e", "(e)", "1x1", "3"])
def test_words_are_not_expressions(word):
    from cnnspec.spec.expressions import is_expression

    assert not is_expression(word)


@pytest.mark.slow
def test_a_checkpoint_of_a_plugin_model_loads_in_a_fresh_process_once_the_plugin_is_loaded(tmp_path, registry_restored):
    """A checkpoint never imports its plugins: the fresh process names the missing type
    and --plugin, and loads the model once it has loaded the plugin itself."""
    import subprocess

    from cnnspec.models.checkpoint import save_checkpoint
    from cnnspec.spec.plugins import load_plugins

    load_plugins([str(PLUGIN)])
    spec = parse_spec(PLUGIN_SPEC, "t.yaml")
    model = build_model(spec).eval()
    meta = {"classes": [str(i) for i in range(10)], "mean": [0.0] * 3, "std": [1.0] * 3, "input_shape": [3, 8, 8]}
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, spec, meta, {"model": {"spec": "t.yaml", "plugins": [str(PLUGIN)]}}, 0, 0)
    x = torch.randn(1, 3, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    expected = model(x)
    program = ("import sys, torch; from cnnspec.models.checkpoint import load_network; "
               "from cnnspec.spec.plugins import load_plugins; load_plugins(sys.argv[3:]); "
               "model, _ = load_network(sys.argv[1]); x = torch.load(sys.argv[2], weights_only=True); "
               "print(' '.join(f'{v:.6f}' for v in model(x)[0].tolist()))")

    def run(*plugins):
        return subprocess.run([sys.executable, "-c", program, str(path), str(tmp_path / "x.pt"), *plugins],
                              capture_output=True, text=True, cwd=ROOT,
                              env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})

    refused = run()
    assert refused.returncode != 0 and "space_to_depth" in refused.stderr and "--plugin" in refused.stderr
    done = run(str(PLUGIN))
    assert done.returncode == 0, done.stderr
    assert [float(v) for v in done.stdout.split()] == pytest.approx(expected[0].tolist(), abs=1e-5)


def test_a_softmax_that_other_layers_follow_is_a_warning():
    # only the last layer's softmax is folded into the loss: a softmax before a trailing
    # dropout or scale would train the loss on probabilities
    for tail in ("  - dropout: 0.5", "  - scale: 2.0"):
        text = spec_of("  - conv: 4\n  - global_avg_pool\n  - dense: {units: num_classes, activation: softmax}\n"
                       + tail)
        (found,) = warnings_of(text)
        assert found.startswith("t.yaml:6:") and "layers[2].activation: dense_1: a softmax before the end" in found
    last = spec_of("  - conv: 4\n  - global_avg_pool\n  - dense: {units: num_classes, activation: softmax}")
    assert warnings_of(last) == []  # the Keras way: folded into the loss, no warning


def test_repeat_n_may_be_arithmetic_outside_a_block_too():
    text = spec_of('  - repeat: {n: "2 * 3", layers: [conv: 4]}\n  - global_avg_pool\n  - dense: num_classes')
    model = build_model(parse_spec(text, "t.yaml"))
    assert sum(isinstance(module, torch.nn.Conv2d) for module in model.modules()) == 6
