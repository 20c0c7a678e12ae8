"""The layer registry and the spec schema describe the same language (as timm's tests iterate
list_models(), these iterate the registry): every registered layer type, built from the
example its schema entry carries, infers the shapes its modules really produce and the
parameter counts the built model really has; and every name list in the schema equals
the table in the code that gives it meaning."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import torch

from cnnspec import layers
from cnnspec.errors import SpecError
from cnnspec.layers import activations, augmentation, conv, registry, reshape
from cnnspec.models.compiler import build_model
from cnnspec.models.shapes import infer
from cnnspec.models.summary import summarize
from cnnspec.spec import schema_file
from cnnspec.spec.reader import EXPANDERS, layer_options, layer_schemas, parse_spec
from cnnspec.training import augment
from tests.layerchecks import INPUT, model_counts, module_of, spec_for

LAYER_SCHEMAS = layer_schemas()
SCHEMA = registry.spec_schema()

CLASSES = 5
WRITTEN = sorted(t for t, rule in layers.LAYERS.items() if rule.written)

@pytest.mark.parametrize("layer_type", sorted(layers.LAYERS))
def test_every_layer_type_infers_what_its_modules_compute(layer_type):
    spec = parse_spec(spec_for(layer_type), f"<{layer_type}>")
    records = infer(spec, INPUT, CLASSES).records
    assert layer_type in {record.node.type for record in records}
    model = build_model(spec, INPUT, CLASSES).eval()
    seen = {}
    hooks = [module_of(model, record.node.name).register_forward_hook(
        lambda module, args, out, name=record.node.name: seen.__setitem__(name, tuple(out.shape[1:])))
        for record in records]
    with torch.no_grad():
        logits = model(torch.randn(2, *INPUT))
    for hook in hooks:
        hook.remove()
    assert logits.shape == (2, CLASSES)
    for record in records:
        assert seen[record.node.name] == record.out_shape, (record.node.name, record.node.type)

    summary = summarize(spec, INPUT, CLASSES)
    assert (summary.trainable, summary.non_trainable) == model_counts(model)


def test_every_written_layer_type_is_in_the_schema_with_an_example():
    assert set(LAYER_SCHEMAS) - set(EXPANDERS) == set(WRITTEN)
    assert sorted(SCHEMA["properties"]["defaults"]["propertyNames"]["enum"]) == WRITTEN
    assert all("x-example" in LAYER_SCHEMAS[t] for t in WRITTEN)


def shared_refs(layer_type: str) -> set[str]:
    return {part["$ref"].rsplit("/", 1)[-1] for part in LAYER_SCHEMAS[layer_type].get("allOf", [])}


@pytest.mark.parametrize("layer_type", WRITTEN)
def test_registry_facts_match_the_schema(layer_type):
    rule, own = layers.LAYERS[layer_type], LAYER_SCHEMAS[layer_type]["properties"]
    assert "layer_options" in shared_refs(layer_type)
    assert rule.weighted == ("weighted_options" in shared_refs(layer_type))
    lists = {key for key, option in own.items()
             if option.get("$ref", "").endswith("/layer_list")
             or option.get("items", {}).get("$ref", "").endswith("/layer")}
    branches = {key for key, option in own.items()
                if option.get("items", {}).get("$ref", "").endswith(("/layer_list", "/branch"))}
    assert set(rule.child_lists) == lists and {rule.branch_lists} - {None} == branches
    activations = {key for key, option in own.items() if option.get("$ref", "").endswith("/activation_name")}
    assert rule.softmax_option is None or rule.softmax_option in activations


def enum(layer_type: str, option: str) -> set:
    return set(layer_options(layer_type)[option]["enum"])


def test_schema_name_lists_equal_the_tables_that_give_them_meaning():
    assert set(SCHEMA["$defs"]["activation_name"]["enum"]) == set(activations.ACTIVATIONS)
    assert enum("conv", "init") == enum("dense", "init") == set(conv.INITS)
    assert enum("pad", "mode") == set(reshape.PADS)
    assert enum("random_flip", "mode") == set(augmentation.RandomFlip.AXES)
    assert enum("random_translation", "fill") == enum("random_crop", "mode") == set(augment.SHIFT_MODES)
    assert set(augmentation.AUGMENTS) == {"random_flip", "random_translation", "random_crop"}
    # every option naming an activation refers to the one shared list
    for layer_type in WRITTEN:
        for key, option in LAYER_SCHEMAS[layer_type]["properties"].items():
            if key in ("activation", "fn"):
                assert option["$ref"] == "#/$defs/activation_name", (layer_type, key)


def test_shared_options_are_defined_once():
    for layer_type in WRITTEN:
        own = LAYER_SCHEMAS[layer_type]["properties"]
        assert not {"name", "trainable", "l2", "lr_mult", "wd_mult"} & set(own), layer_type


def test_drift_between_registry_and_schema_is_reported_as_cnnspec_s_bug(monkeypatch):
    spec = parse_spec(spec_for("conv"), "<conv>")
    monkeypatch.delitem(activations.ACTIVATIONS, "relu")
    with pytest.raises(RuntimeError, match="cnnspec bug: .*'relu' passed the spec schema"):
        build_model(spec, INPUT, CLASSES)
    monkeypatch.delitem(layers.LAYERS, "flatten")
    with pytest.raises(RuntimeError, match="cnnspec bug: layer type 'flatten'"):
        infer(spec, INPUT, CLASSES)


def test_a_type_registered_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        layers.register_layer("conv", layers.LayerRule(conv.shape_conv, conv.build_conv))


def fenced(text: str, language: str) -> list[str]:
    return [block.split("```")[0] for block in text.split(f"```{language}\n")[1:]]


def test_the_adding_a_layer_type_example_in_the_docs_is_the_shipped_code():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    section = (root / "docs" / "spec.md").read_text().split("## Adding a layer type")[1].split("\n## ")[0]
    source = (root / "cnnspec" / "layers" / "reshape.py").read_text()
    code = fenced(section, "python")
    assert len(code) == 3 and all(block in source for block in code)
    assert reshape.SCALE_OPTIONS["x-example"] == LAYER_SCHEMAS["scale"]["x-example"]


def test_the_schema_file_editors_use_is_the_assembled_schema():
    """cnnspec/spec/schema.json is written by `python -m cnnspec.spec.schema_file --write`."""
    assert schema_file.SCHEMA_FILE.read_text(encoding="utf-8") == schema_file.schema_text()
    assert json.loads(schema_file.schema_text()) == registry.spec_schema()
    assert schema_file.main(["--check"]) == 0


def test_the_assembled_schema_is_a_valid_2020_12_schema_and_every_ref_resolves():
    """register_layer checks a plugin's entry alone; the built-in entries, the shared $defs
    and the $refs between entries are checked here, once, instead of at every import."""
    schema = registry.spec_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    refs = {match for match in re.findall(r'"\$ref": "#/\$defs/([a-z_0-9]+)"', json.dumps(schema))}
    assert refs and refs <= set(schema["$defs"]), refs - set(schema["$defs"])


def test_an_out_of_date_schema_file_is_reported_and_rewritten(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "schema.json"
    stale.write_text(schema_file.schema_text().replace('"scale"', '"scaling"'))
    monkeypatch.setattr(schema_file, "SCHEMA_FILE", stale)
    assert schema_file.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert schema_file.main(["--write"]) == 0
    assert stale.read_text() == schema_file.schema_text()



def test_modules_defined_on_first_use_pickle_and_import_by_name():
    """A type file defines its nn.Modules inside modules() (so shape rules never import torch);
    they still carry their file's name, so pickle (and torch.save of a whole model) finds them."""
    import pickle

    from cnnspec.layers.residual import Residual

    assert (Residual.__module__, Residual.__qualname__) == ("cnnspec.layers.residual", "Residual")
    spec = parse_spec(spec_for("residual"), "<residual>")
    model = build_model(spec, INPUT, CLASSES).eval()
    copied = pickle.loads(pickle.dumps(model))
    assert any(isinstance(module, Residual) for module in copied.modules())
    images = torch.randn(2, *INPUT)
    with torch.no_grad():
        assert torch.equal(model(images), copied(images))
    with pytest.raises(ImportError, match="Residuals"):
        from cnnspec.layers.residual import Residuals  # noqa: F401


def test_a_plugin_shape_rule_that_returns_nothing_is_one_located_line(monkeypatch):
    def forgot_to_return(node, in_shape, ctx):
        in_shape  # noqa: B018 - the bug under test: no return

    monkeypatch.setitem(layers.LAYERS, "flatten", layers.LayerRule(forgot_to_return, reshape.build_flatten))
    with pytest.raises(SpecError) as caught:
        infer(parse_spec(spec_for("conv"), "<conv>"), INPUT, CLASSES)
    message = str(caught.value)
    assert message.startswith("<conv>:") and "its shape rule returned NoneType, not Inferred(" in message


def test_import_of_a_misspelt_model_says_the_name_it_meant():
    from cnnspec.models.importer import ImportFailure, checked_writer

    with pytest.raises(ImportFailure, match=r"import resnet_18: not a torchvision classification model "
                                            r"\(did you mean 'resnet18'\?\); importable: alexnet"):
        checked_writer("resnet_18")


def test_build_model_refuses_an_input_shape_or_class_count_it_cannot_build():
    spec = parse_spec(spec_for("conv"), "<conv>")
    for shape, classes, words in [((0, 8, 8), 5, "input_shape must be"), ((3, 8.5, 8), 5, "input_shape must be"),
                                  ("3x8x8", 5, "input_shape must be"), ((3, 8, 8), 0, "num_classes must be"),
                                  ((3, 8, 8), True, "num_classes must be"), ((3, 8, 8), "5", "num_classes must be")]:
        with pytest.raises(ValueError, match=words):
            build_model(spec, shape, classes)


def test_builds_of_one_spec_from_several_threads_each_get_their_own_widths():
    import concurrent.futures

    spec = parse_spec('name: t\nlayers:\n  - conv: {filters: "$in_channels * 4", kernel: 3}\n'
                      '  - conv: {filters: "$in_channels * 2", kernel: 3}\n  - global_avg_pool\n'
                      '  - dense: num_classes\n', "t.yaml")

    def widths(channels):
        model = build_model(spec, (channels, 12, 12), 3)
        return channels, [tuple(p.shape) for name, p in model.named_parameters() if name.endswith("weight")]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(widths, [1, 3] * 40))
    for channels, shapes in results:
        assert shapes[:2] == [(channels * 4, channels, 3, 3), (channels * 8, channels * 4, 3, 3)], (channels, shapes)


def test_a_plugin_build_rule_that_returns_a_module_is_one_located_line(monkeypatch):
    monkeypatch.setitem(layers.LAYERS, "flatten",
                        layers.LayerRule(reshape.shape_flatten, lambda node, in_shape, ctx: torch.nn.Flatten()))
    with pytest.raises(SpecError, match=r"its build rule returned Flatten, not a list of \(name, nn.Module\) pairs"):
        build_model(parse_spec(spec_for("conv"), "<conv>"), INPUT, CLASSES)


def test_two_plugin_files_of_one_name_in_two_folders_are_two_plugins(tmp_path):
    import cnnspec

    for folder, layer_type in (("pa", "alpha_id"), ("pb", "beta_id")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "layers.py").write_text(
            f"import cnnspec\nfrom cnnspec.layers import reshape\n"
            f"cnnspec.register_layer({layer_type!r}, cnnspec.LayerRule(reshape.shape_flatten, reshape.build_flatten),"
            f" schema={{'description': 'test', 'properties': {{}}}})\n")
    try:
        modules = cnnspec.load_plugins([tmp_path / "pa" / "layers.py", str(tmp_path / "pb" / "layers.py")])
        assert [Path(m.__file__).parent.name for m in modules] == ["pa", "pb"]
        assert {"alpha_id", "beta_id"} <= set(layers.LAYERS)
        alone = cnnspec.load_plugins(str(tmp_path / "pa" / "layers.py"))  # one name alone: a list of one
        assert alone == [modules[0]]
    finally:  # the other tests of this worker see the built-in types only
        for layer_type in ("alpha_id", "beta_id"):
            layers.LAYERS.pop(layer_type, None)
            if registry.LAYER_SCHEMAS.pop(layer_type, None) is not None:
                registry.schema_changed()


def test_load_weights_from_nothing_is_a_params_error_and_the_api_lists_itself():
    import cnnspec
    from cnnspec.errors import ParamsError

    model = build_model(parse_spec(spec_for("conv"), "<conv>"), INPUT, CLASSES)
    with pytest.raises(ParamsError, match="no layer of it fits this spec by order and shape \\(it holds no tensors\\)"):
        cnnspec.load_weights(model, {})
    assert {"build_model", "predict", "load_model", "summarize"} <= set(dir(cnnspec))


def test_a_notebook_cell_run_again_can_replace_its_own_type_and_a_failed_plugin_leaves_none(tmp_path):
    import cnnspec
    from cnnspec.spec.plugins import PluginError

    rule = layers.LayerRule(reshape.shape_flatten, reshape.build_flatten)
    schema = {"description": "test", "properties": {}}
    cnnspec.register_layer("cell_type", rule, schema=schema)
    try:
        with pytest.raises(ValueError, match="already registered \\(replace=True registers it again\\)"):
            cnnspec.register_layer("cell_type", rule, schema=schema)
        assert cnnspec.register_layer("cell_type", rule, schema=schema, replace=True) is rule
        with pytest.raises(ValueError, match="'flatten' is already registered$"):
            cnnspec.register_layer("flatten", rule, replace=True)  # a built-in type stays
    finally:
        registry.unregister_layer("cell_type")
    half = tmp_path / "half.py"  # registers one type, then fails on a typo
    half.write_text("import cnnspec\nfrom cnnspec.layers import reshape\n"
                    "cnnspec.register_layer('gamma_id', cnnspec.LayerRule(reshape.shape_flatten, "
                    "reshape.build_flatten), schema={'properties': {}})\nnot_defined\n")
    with pytest.raises(PluginError, match="NameError"):
        cnnspec.load_plugins([half])
    assert "gamma_id" not in layers.LAYERS and "gamma_id" not in registry.LAYER_SCHEMAS
    half.write_text(half.read_text().replace("not_defined\n", ""))  # fixed: it loads
    try:
        cnnspec.load_plugins([half])
        assert "gamma_id" in layers.LAYERS
    finally:
        registry.unregister_layer("gamma_id")


def test_a_plugin_path_that_is_a_fifo_or_a_folder_says_what_it_is(tmp_path):
    """`--plugin x.py` naming a FIFO or a folder said `no such file`, though the path is there."""
    import cnnspec
    from cnnspec.spec.plugins import PluginError

    os.mkfifo(tmp_path / "pipe.py")
    (tmp_path / "folder.py").mkdir()
    for name, words in (("pipe.py", "a named pipe (FIFO), not a regular file"),
                        ("folder.py", "a folder, not a regular file"), ("gone.py", "no such file")):
        with pytest.raises(PluginError) as refused:
            cnnspec.load_plugins([str(tmp_path / name)])
        assert str(refused.value) == f"plugin {tmp_path / name}: {words}"


def reference_table() -> dict[str, tuple[str, str]]:
    """docs/spec.md's "Layer types" table: type -> (shorthand, options cell)."""
    root = Path(__file__).resolve().parent.parent
    section = (root / "docs" / "spec.md").read_text().split("## Layer types")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines()[2:]:
        if line.startswith("| "):
            names, shorthand, options = (cell.strip() for cell in line.strip().strip("|").split("|"))
            rows.update({name.strip(): (shorthand, options) for name in names.split(",")})
    return rows


SHARED_OPTIONS = {"name", "trainable", "l2", "lr_mult", "wd_mult"}


@pytest.mark.parametrize("layer_type", WRITTEN)
def test_the_reference_table_gives_every_layer_type_its_shorthand_and_options(layer_type):
    """A type or option added to the registry is added to docs/spec.md's table too."""
    rows = reference_table()
    assert layer_type in rows, f"docs/spec.md's layer table has no row for {layer_type}"
    shorthand, options = rows[layer_type]
    assert shorthand == (LAYER_SCHEMAS[layer_type].get("x-shorthand") or "")
    for option in set(LAYER_SCHEMAS[layer_type]["properties"]) - SHARED_OPTIONS:
        assert re.search(rf"\b{option}\b", options), f"{layer_type}: {option} is not in docs/spec.md's table"


def test_the_reference_names_every_weighted_layer_type():
    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "spec.md").read_text()
    named = re.search(r"Weighted layers \(([^)]*)\) also accept", text).group(1)
    weighted = {t for t in WRITTEN if layers.LAYERS[t].weighted}
    assert set(named.split(", ")) == weighted
