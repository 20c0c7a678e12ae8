"""Good specs load into the LayerNode tree the compiler expects."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cnnspec import cli
from cnnspec.errors import SpecError
from cnnspec.layers.registry import spec_schema
from cnnspec.spec.nodes import Spec
from cnnspec.spec.reader import layer_schemas, load_spec, parse_spec
from cnnspec.spec.yamlio import load_yaml
from tests.no_torch import run_without_torch

ROOT = Path(__file__).parent.parent
SCHEMA = spec_schema()
LAYER_SCHEMAS = layer_schemas()

TINY = """\
name: tiny
description: a small example
input: {channels: 3, height: 32, width: 32}
defaults:
  conv: {padding: valid, activation: relu}
blocks:
  conv_bn:
    args: {filters: null, stride: 1}
    layers:
      - conv: {filters: $filters, stride: $stride, bias: false}
      - bn
      - activation: relu
layers:
  - use: {block: conv_bn, filters: 32}
  - repeat:
      n: 2
      layers:
        - use: {block: conv_bn, filters: 64, stride: 2}
  - max_pool: 3
  - dropout: 0.5
  - conv: {filters: 16, padding: same, l2: 1e-4, name: head_conv}
  - global_avg_pool
  - dense: {units: num_classes}
"""


def flat(nodes):
    for node in nodes:
        yield node
        for children in node.children.values():
            yield from flat(children)


@pytest.fixture(scope="module")
def tiny():
    return parse_spec(TINY, "tiny.yaml")


def test_top_level_fields(tiny):
    assert (tiny.name, tiny.description, tiny.input) == ("tiny", "a small example", (3, 32, 32))
    assert tiny.file == "tiny.yaml" and tiny.text == TINY


def test_blocks_and_repeat_expand_into_named_groups(tiny):
    top = [(node.type, node.name) for node in tiny.layers]
    assert top == [("group", "conv_bn_1"), ("group", "conv_bn_2"), ("group", "conv_bn_3"),
                   ("max_pool", "max_pool_1"), ("dropout", "dropout_1"), ("conv", "head_conv"),
                   ("global_avg_pool", "global_avg_pool_1"), ("dense", "dense_1")]
    inner = [[child.name for child in group.children["layers"]] for group in tiny.layers[:3]]
    assert inner == [["conv_1", "bn_1", "activation_1"], ["conv_2", "bn_2", "activation_2"],
                     ["conv_3", "bn_3", "activation_3"]]
    assert tiny.layers[1].options["args"] == {"filters": 64, "stride": 2}


def test_block_arguments_are_substituted_and_located_at_the_call(tiny):
    first, second = tiny.layers[0].children["layers"][0], tiny.layers[1].children["layers"][0]
    assert (first.options["filters"], first.options["stride"]) == (32, 1)
    assert (second.options["filters"], second.options["stride"]) == (64, 2)
    assert second.option_where["filters"].line == 18   # the `use` line, not the block's
    assert second.where.line == 10                      # the layer itself is in the block
    assert "(block conv_bn)" in second.path


def test_defaults_and_schema_defaults_are_filled(tiny):
    conv = tiny.layers[0].children["layers"][0]
    assert conv.options["padding"] == "valid" and conv.options["activation"] == "relu"
    assert conv.options["bias"] is False
    expected = {key: value["default"] for key, value in LAYER_SCHEMAS["conv"]["properties"].items()
                if "default" in value and key not in ("padding", "activation", "bias", "stride")}
    assert {key: conv.options[key] for key in expected} == expected
    head = next(node for node in tiny.layers if node.name == "head_conv")
    assert head.options["padding"] == "same"                       # its own option wins
    assert "name" not in head.options


def test_exponent_floats_and_shorthands(tiny):
    head = next(node for node in tiny.layers if node.name == "head_conv")
    assert head.options["l2"] == pytest.approx(1e-4) and isinstance(head.options["l2"], float)
    pool, dropout = tiny.layers[3], tiny.layers[4]
    assert (pool.options["kernel"], pool.options["stride"]) == (3, 3)   # stride = kernel
    assert dropout.options["rate"] == 0.5
    assert tiny.layers[0].children["layers"][2].options["fn"] == "relu"
    assert tiny.layers[-1].options["units"] == "num_classes"


def test_composite_layers_have_children():
    spec = parse_spec("""\
name: composite
blocks:
  fire:
    args: {squeeze: 2, expand: 4}
    layers:
      - conv: {filters: $squeeze, kernel: 1}
      - parallel:
          branches:
            - [conv: {filters: $expand, kernel: 1}]
            - [conv: {filters: $expand, kernel: 3}]
layers:
  - residual: {pre: [bn], body: [conv: 8], shortcut: projection}
  - residual: {body: [conv: 8], shortcut: [conv: {filters: 8, kernel: 1}]}
  - use: fire
  - bn
""", "composite.yaml")
    pre_act, custom, fire, bn = spec.layers
    assert set(pre_act.children) == {"pre", "body"} and pre_act.options["shortcut"] == "projection"
    assert "body" not in pre_act.options and "pre" not in pre_act.options
    assert set(custom.children) == {"body", "shortcut"} and "shortcut" not in custom.options
    parallel = fire.children["layers"][1]
    assert list(parallel.children) == ["branch_0", "branch_1"] and "branches" not in parallel.options
    assert [b[0].options["kernel"] for b in parallel.children.values()] == [1, 3]
    assert parallel.children["branch_0"][0].options["filters"] == 4
    assert pre_act.children["pre"][0].name == "bn_1" and bn.name == "bn_2"  # counted in order


def test_generated_names_skip_names_the_user_took():
    spec = parse_spec("name: n\nlayers:\n  - conv: {filters: 4, name: conv_1}\n  - conv: 4\n"
                      "  - conv: 4\n", "n.yaml")
    assert [node.name for node in spec.layers] == ["conv_1", "conv_2", "conv_3"]
    names = [node.name for node in flat(spec.layers)]
    assert len(names) == len(set(names))


def test_load_spec_reads_files_and_passes_specs_through(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    spec = load_spec(path)
    assert isinstance(spec, Spec) and spec.file == str(path)
    assert load_spec(spec) is spec
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "specs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_spec_parses(path):
    spec = load_spec(path)
    assert spec.layers
    for node in flat(spec.layers):
        assert not any(isinstance(v, str) and v.startswith("$") for v in node.options.values())
        assert node.type not in ("repeat", "use")


def test_yaml_locations_duplicates_and_floats():
    data = load_yaml("a: 1e-4\nb:\n  - x\n  - {c: 5E3}\n", "f.yaml")
    assert data["a"] == 1e-4 and data["b"][1]["c"] == 5000.0
    assert (data.key_where["b"].line, data.value_where["a"].col) == (2, 4)
    assert [place.line for place in data["b"].item_where] == [3, 4]
    assert data["b"][1].key_where["c"].col == 6
    assert yaml.safe_load("a: 1e-4") == {"a": "1e-4"}   # PyYAML itself is left as it was
    with pytest.raises(SpecError, match="^f.yaml:2:1: a: duplicate key \\(first written on line 1\\)$"):
        load_yaml("a: 1\na: 2\n", "f.yaml")


@pytest.mark.parametrize("text, where", [
    ("layers:\n  - conv: 8\n  - dense:\n      units: 10\n      'units': 12\n",
     "f.yaml:5:7: layers[1].dense.units: duplicate key (first written on line 4)"),
    # the first duplicate in the order the file is written, a nested one before a later one
    ("a:\n  b: {c: 1, c: 2}\nd: 1\nd: 2\n", "f.yaml:2:13: a.b.c: duplicate key (first written on line 2)"),
    # a mapping shared through an alias is named where it is first written
    ("base: &b {x: 1, x: 2}\nuse: *b\n", "f.yaml:1:17: base.x: duplicate key (first written on line 1)"),
])
def test_a_duplicate_key_names_its_path(text, where):
    with pytest.raises(SpecError) as caught:
        load_yaml(text, "f.yaml")
    assert str(caught.value) == where


def test_keys_that_only_look_alike_are_not_duplicates():
    data = load_yaml("a: 1\n'a ': 2\nA: 3\n", "f.yaml")
    assert list(data) == ["a", "a ", "A"]


# ---------------------------------------------------------------- the command

def test_layers_command_lists_every_type_with_defaults(capsys):
    assert cli.main(["layers"]) == 0
    out = capsys.readouterr().out
    blocks = {chunk.split(":", 1)[0]: chunk for chunk in out.strip().split("\n\n")}
    types = {name for name, sub in SCHEMA["$defs"].items() if sub.get("x-layer")}
    assert set(blocks) == types
    for name in types:
        properties = SCHEMA["$defs"][name]["properties"]
        for key, option in properties.items():
            line = next(text for text in blocks[name].splitlines() if text.split()[0] == key)
            if "default" in option and "x-default-from" not in option:
                assert json.dumps(option["default"]) in line, line
            assert option.get("description", "") in line


def test_validate_prints_ok_lines(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    assert cli.main(["validate", str(path), str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"ok: {path}", f"ok: {path}"]


@pytest.mark.parametrize("bad", ["3x32", "axbxc", "0x32x32"])
def test_bad_input_option_is_one_line(bad, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    with pytest.raises(SystemExit) as exited:
        cli.main(["validate", "--input", bad, str(path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--input" in err[0]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cnnspec.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_debug_shows_the_traceback():
    bad = "tests/bad_specs/negative_filters.yaml"
    quiet, loud = run_cli("validate", bad), run_cli("validate", "--debug", bad)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "SpecError" in loud.stderr


@pytest.mark.parametrize("how", ["--debug before the command", "CNNSPEC_DEBUG=1"])
def test_every_way_of_asking_for_debug_shows_the_traceback(how, monkeypatch, capsys):
    bad = str(ROOT / "tests/bad_specs/negative_filters.yaml")
    argv = ["--debug", "validate", bad] if how.startswith("--") else ["validate", bad]
    if how.startswith("CNNSPEC"):
        monkeypatch.setenv("CNNSPEC_DEBUG", "1")
    with pytest.raises(SpecError, match="filters"):
        cli.main(argv)


def test_layers_command_does_not_import_torch():
    run_without_torch("from cnnspec import cli; cli.main(['layers'])")


def test_validate_does_not_import_torch():
    run_without_torch("from cnnspec import cli; cli.main(['validate', 'specs/simcnn.yaml'])")


def doc_examples():
    text = (ROOT / "docs" / "spec.md").read_text()
    return [block for block in text.split("```yaml\n")[1:]]


@pytest.mark.parametrize("index", range(len(doc_examples())))
def test_every_example_in_the_reference_parses(index):
    example = doc_examples()[index].split("```")[0]
    if example.startswith("- "):
        example = "layers:\n" + "".join(f"  {line}\n" for line in example.splitlines())
    if not example.startswith("name:"):
        example = "name: example\n" + example
    spec = parse_spec(example, "docs/spec.md")
    assert spec.layers
