"""Optional parts of a block: `when: $arg` on any layer (a `use` included) keeps the layer
when the argument is true and leaves it out when false, so one block serves the variants of a
family (a squeeze-excitation gate present or not) instead of two copies."""
import pytest

from cnnspec.errors import SpecError
from cnnspec.models.summary import summarize
from cnnspec.spec.reader import parse_spec

SPEC = """name: t
input: {channels: 3, height: 8, width: 8}
blocks:
  gate:
    layers:
      - parallel:
          merge: multiply
          branches:
            - []
            - [global_avg_pool: {keep_dims: true}, conv: {filters: $in_channels, kernel: 1, activation: sigmoid}]
  unit:
    args: {se: false, norm: true}
    layers:
      - conv: 8
      - use: {block: gate, when: $se}
      - bn: {when: $norm}
layers:
  - use: {block: unit, se: true}
  - use: {block: unit, norm: false}
  - global_avg_pool
  - dense: num_classes
"""


def children_types(spec, index):
    return [node.type for node in spec.layers[index].children["layers"]]


def test_an_argument_switches_a_block_part_on_and_off():
    spec = parse_spec(SPEC, "t.yaml")
    assert children_types(spec, 0) == ["conv", "group", "bn"]
    assert children_types(spec, 1) == ["conv"]
    assert "when" not in spec.layers[0].children["layers"][2].options
    rows = {row.name for row in summarize(spec).rows}
    assert "gate_1" in rows and "bn_1" in rows and "bn_2" not in rows


def test_when_takes_true_or_false_only():
    with pytest.raises(SpecError) as caught:
        parse_spec(SPEC.replace("{block: unit, norm: false}", "{block: unit, norm: 1}"), "t.yaml")
    assert str(caught.value) == ("t.yaml:19:30: layers[1] (block unit) > layers[2].bn.when: "
                                 "when: expected true or false (or a block argument holding one), not 1")


def test_when_works_outside_blocks_too():
    spec = parse_spec(SPEC.replace("  - global_avg_pool\n", "  - bn: {when: false}\n  - global_avg_pool\n"), "t.yaml")
    assert [node.type for node in spec.layers] == ["group", "group", "global_avg_pool", "dense"]
