"""Property-based robustness of the spec language.

Whatever text a user feeds cnnspec, one of two things happens:

    parse_spec -> infer_shapes -> (small specs only) build_model -> forward on 1 image
    succeeds, or raises SpecError naming where the problem is.

Never another exception, never a hang, never an attempt to allocate absurd memory.
The inputs come from three generators: (a) random layer lists drawn from every layer
type of the spec schema (cnnspec.layers.registry) with sane and hostile option
values; (b) mutations of the
shipped specs/*.yaml; (c) truncated and garbled YAML, plus hand-made hostile documents
(alias bombs, deep nesting, huge files). Runs are derandomized, so CI sees the same
1,000+ cases every time.

The other readers get the same contract (one line, a CnnspecError, bounded time and
memory per case) from structure-aware generators at the end of this file: expressions,
params.yaml, CSV manifests, image files and checkpoint bytes. `make fuzz` runs every
generator 20 times longer, with fresh random cases (tests/fuzzing.py).
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnspec
from cnnspec import SpecError
from cnnspec.layers.registry import spec_schema
from cnnspec.models.shapes import infer_shapes
from tests.fuzzing import bounded, examples, factor

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = spec_schema()
LAYER_SCHEMAS = {name: sub for name, sub in SCHEMA["$defs"].items() if sub.get("x-layer")}
COMPOSITES = {"residual", "parallel", "repeat", "use"}
LEAVES = sorted(set(LAYER_SCHEMAS) - COMPOSITES)
REAL_SPECS = {path.name: path.read_text(encoding="utf-8") for path in sorted((ROOT / "specs").glob("*.yaml"))}

FILE = "fuzz.yaml"
INPUT = (3, 32, 32)
CLASSES = 10
# Only specs this small are built and run: the point is the contract, not the maths.
BUILD_PARAMS = 200_000
BUILD_ACTIVATIONS = 100_000   # largest layer output, in numbers per image
BUILD_MACS = 20_000_000
# Errors about the whole document have no line or key to point at, only the file.
WHOLE_DOCUMENT = re.compile(r"too large|nesting deeper|is empty|top level")

FUZZ = settings()  # the loaded profile: tests/fuzzing.py ("cnnspec" by default, "fuzz" for make fuzz)
LONG = factor()  # timeouts grow with the profile's number of cases


@pytest.fixture(scope="module", autouse=True)
def warm_up():
    """Pay torch's and the compiler's first-call costs before the deadline clock runs."""
    torch.set_num_threads(1)
    check_text(REAL_SPECS["simcnn.yaml"])


# ---------------------------------------------------------------- the property

def assert_located(error: SpecError, text: str) -> None:
    message = str(error)
    assert "\n" not in message, f"not one line: {message!r}"
    assert message.startswith(f"{FILE}:"), f"no file in: {message}"
    if error.line is None and not error.key:
        assert WHOLE_DOCUMENT.search(message), f"no line or key in: {message}"
    if error.line is not None:
        assert 1 <= error.line <= yaml_line_count(text) + 1, f"line out of the file: {message}"


def yaml_line_count(text: str) -> int:
    """Lines as YAML (and most editors) count them: a carriage return, NEL and the
    Unicode line and paragraph separators end a line too, not only a newline."""
    return len(re.split("\r\n|[\n\r\x85\u2028\u2029]", text))


def largest_activation(records) -> int:
    return max((math.prod(out_shape) for _, _, out_shape in records), default=0)


def check_text(text: str) -> str:
    """The property for one input; returns how far the input got (for the counts)."""
    try:
        spec = cnnspec.parse_spec(text, FILE)
        records = infer_shapes(spec, INPUT, CLASSES)
        summary = cnnspec.summarize(spec, input_shape=INPUT, num_classes=CLASSES)
    except SpecError as error:
        assert_located(error, text)
        return "refused"
    if (summary.total > BUILD_PARAMS or summary.macs > BUILD_MACS
            or largest_activation(records) > BUILD_ACTIVATIONS):
        return "checked"
    try:
        model = cnnspec.build_model(spec, INPUT, CLASSES).eval()
    except SpecError as error:
        assert_located(error, text)
        return "refused"
    assert counted_in_model(model) == (summary.trainable, summary.non_trainable)
    with torch.no_grad():
        logits = model(torch.randn(1, *INPUT, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (1, CLASSES)
    return "built"


def counted_in_model(model) -> tuple[int, int]:
    """Keras' counts from the built model: trainable = parameters that require grad;
    non-trainable = frozen parameters + batch norm's running mean and variance."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    statistics = sum(b.numel() for name, b in model.named_buffers()
                     if name.endswith(("running_mean", "running_var")))
    return trainable, frozen + statistics


def dump(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)


# ---------------------------------------------------------------- (a) random specs

# Each case gets its own copy: the lists and dicts here would otherwise be shared by every
# case, and a strategy that mutates what it drew would change them for the cases after it
# (Hypothesis then stops with FlakyStrategyDefinition).
HOSTILE = st.sampled_from([0, -1, -7, 10**9, 2**63, 10**30, 0.5, -0.0, 1e-300, float("inf"),
                           float("nan"), "", "x", "same", "num_classes", "$n", None, True, False,
                           [], [1], [1, [2]], [0, 0, 0, 0], {}, {"a": 1}, "conv"]).map(copy.deepcopy)
NAMES = st.sampled_from(["a", "stem", "x_1", "conv_1", "b", "1bad", "has space", "a"])


def sane_value(key: str, prop: dict, layers) -> st.SearchStrategy:
    """A value that fits the option's schema (or nearly: sizes stay small)."""
    if "$ref" in prop:
        target = SCHEMA["$defs"][prop["$ref"].rsplit("/", 1)[-1]]
        return layers if target.get("type") == "array" or "$ref" in str(target.get("items")) \
            else sane_value(key, target, layers)
    if key == "branches":
        return st.lists(layers, min_size=prop.get("minItems", 1), max_size=3)
    if key == "name":
        return NAMES
    if "enum" in prop:
        return st.sampled_from(prop["enum"])
    alternatives = prop.get("oneOf", []) + prop.get("anyOf", [])
    if alternatives:
        return st.one_of([sane_value(key, alternative, layers) for alternative in alternatives])
    kinds = prop.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    choices = []
    if "integer" in kinds:
        low = prop.get("minimum", 0)
        high = 16 if key in ("filters", "units", "n") else 5
        choices.append(st.integers(low, max(low, min(high, prop.get("maximum", high)))))
    if "number" in kinds:
        low = prop.get("minimum", prop.get("exclusiveMinimum", 0))
        high = min(prop.get("maximum", prop.get("exclusiveMaximum", 2)), 2)
        choices.append(st.floats(low, high, exclude_min="exclusiveMinimum" in prop,
                                 exclude_max="exclusiveMaximum" in prop))
    if "boolean" in kinds:
        choices.append(st.booleans())
    if "string" in kinds:
        pattern = prop.get("pattern", "")
        words = re.findall(r"[a-z_]+", pattern) or ["text"]
        choices.append(st.sampled_from(words))
    if "array" in kinds:
        size = prop.get("minItems", 2)
        items = prop.get("items", {})
        if "$ref" in items:
            choices.append(layers)
        else:
            low = items.get("minimum", 0)
            choices.append(st.lists(st.integers(low, low + 3), min_size=size, max_size=size))
    if key in ("filters", "units"):
        choices.append(st.just("num_classes"))
    return st.one_of(choices) if choices else HOSTILE


def options_for(layer_type: str, layers, wild: bool = True) -> st.SearchStrategy:
    """TYPE's options: required ones mostly present, others sometimes; values mostly sane."""
    properties = LAYER_SCHEMAS[layer_type].get("properties", {})
    required = set(LAYER_SCHEMAS[layer_type].get("required", []))

    @st.composite
    def draw_options(draw):
        options = {}
        for key, prop in properties.items():
            keep = draw(st.integers(0, 19)) < (5 if key not in required else 18 if wild else 20)
            if keep:
                hostile = wild and draw(st.integers(0, 9)) == 0
                options[key] = draw(HOSTILE if hostile else sane_value(key, prop, layers))
        if wild and draw(st.integers(0, 29)) == 0:
            options[draw(st.sampled_from(["kernal", "filter", "x", "unit"]))] = 1
        return options

    return draw_options()


def layer_item(layer_type: str, layers, blocks: list[str], wild: bool) -> st.SearchStrategy:
    """One layer list item, as TYPE, TYPE: shorthand or TYPE: {options}."""
    if layer_type == "use":
        call = st.fixed_dictionaries({"block": st.sampled_from(blocks or ["nowhere"])},
                                     optional={"filters": sane_value("filters", {"type": "integer", "minimum": 1},
                                                                     layers),
                                               **({"name": NAMES, "bogus": HOSTILE} if wild else {})})
        return call.map(lambda options: {"use": options})
    shorthand = LAYER_SCHEMAS[layer_type].get("x-shorthand")
    forms = [options_for(layer_type, layers, wild).map(lambda options: {layer_type: options})]
    if shorthand:
        prop = LAYER_SCHEMAS[layer_type]["properties"][shorthand]
        forms.append(sane_value(shorthand, prop, layers).map(lambda value: {layer_type: value}))
    if not LAYER_SCHEMAS[layer_type].get("required"):
        forms.append(st.just(layer_type))
    return st.one_of(forms)


def layer_lists(blocks: list[str], wild: bool, depth: int = 0) -> st.SearchStrategy:
    """A list of up to 6 layers; composites nest up to three levels. Tame lists (not
    `wild`) hold only in-schema values, so many of them get as far as a model."""
    inner = layer_lists(blocks, wild, depth + 1) if depth < 2 else st.just(["flatten"])
    types = LEAVES + (sorted(COMPOSITES) if depth < 2 else ["use"])
    if not (blocks or wild):
        types = [kind for kind in types if kind != "use"]
    item = st.sampled_from(types).flatmap(lambda kind: layer_item(kind, inner, blocks, wild))
    odd = st.one_of(HOSTILE, st.just({"conv": 4, "bn": {}}), st.just({"conv2d": 8}), st.just({"relu": None}))
    items = st.one_of(item, item, item, item, item, odd) if wild else item
    return st.lists(items, min_size=0 if wild and depth == 0 else 1, max_size=6)


@st.composite
def random_specs(draw) -> str:
    wild = draw(st.booleans())
    block_names = draw(st.lists(st.sampled_from(["unit", "down", "fire"]), max_size=2, unique=True))
    blocks = {}
    for name in block_names:
        args = {"filters": draw(st.one_of(st.none(), st.integers(1, 8)))}
        if wild:
            args = draw(st.dictionaries(st.sampled_from(["filters", "stride", "rate"]),
                                        st.one_of(st.none(), st.integers(1, 8)), max_size=2))
        body = draw(layer_lists(block_names, wild, depth=1))
        if "filters" in args:
            body = [{"conv": {"filters": "$filters", "kernel": 3}}] + body
        if wild and draw(st.booleans()):
            body.append({"use": {"block": draw(st.sampled_from(block_names))}})  # maybe recursive
        blocks[name] = {"args": args, "layers": body} if args else {"layers": body}
    body = draw(layer_lists(block_names, wild))
    for name in block_names:
        if draw(st.booleans()):
            body.insert(0, {"use": {"block": name, "filters": draw(st.integers(1, 8))}})
    tail = draw(st.sampled_from([[]] * wild + [["global_avg_pool", {"dense": "num_classes"}],
                                 ["flatten", {"dense": {"units": "num_classes", "activation": "softmax"}}]]))
    document = {"name": draw(st.one_of(st.just("fuzz"), HOSTILE)) if wild else "fuzz", "layers": body + tail}
    if blocks:
        document["blocks"] = blocks
    if draw(st.integers(0, 4)) == 0:
        defaults = draw(options_for("conv", st.just(["flatten"]), wild))
        if not wild:
            defaults.pop("name", None)
        document["defaults"] = {"conv": defaults}
    if wild and draw(st.integers(0, 9)) == 0:
        document["input"] = {"channels": 3, "height": draw(st.one_of(st.integers(1, 64), HOSTILE)),
                             "width": 32}
    return dump(document)


@pytest.mark.timeout(120 * LONG)
@settings(FUZZ, max_examples=examples(400))
@given(random_specs())
def test_random_specs_build_or_raise_a_located_spec_error(text):
    check_text(text)


def test_random_specs_reach_every_stage():
    """The generator is useful only if its specs get past parsing and into models."""
    outcomes = {"refused": 0, "checked": 0, "built": 0}

    @settings(FUZZ, max_examples=examples(150))
    @given(random_specs())
    def tally(text):
        outcomes[check_text(text)] += 1

    tally()
    assert outcomes["refused"] >= 15 and outcomes["built"] >= 8, outcomes


# ---------------------------------------------------------------- (b) mutated real specs

def paths_in(data, path=()):
    """Every (path to a container, key or index) in a YAML tree."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield path, key
            yield from paths_in(value, path + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield path, index
            yield from paths_in(value, path + (index,))


def at(data, path):
    for part in path:
        data = data[part]
    return data


def swap_type(value):
    swaps = {int: str, float: str, str: lambda v: [v], bool: int, list: lambda v: {"items": v},
             dict: lambda v: [list(pair) for pair in v.items()], type(None): lambda v: {}}
    return swaps.get(type(value), str)(value)


MUTATIONS = ["delete", "rename", "replace", "swap_type", "wrap", "duplicate_item"]


@st.composite
def mutated_specs(draw) -> str:
    name = draw(st.sampled_from(sorted(REAL_SPECS)))
    data = yaml.safe_load(REAL_SPECS[name])
    for _ in range(draw(st.integers(1, 3))):
        places = list(paths_in(data))
        path, key = draw(st.sampled_from(places))
        parent, kind = at(data, path), draw(st.sampled_from(MUTATIONS))
        if kind == "delete":
            del parent[key]
        elif kind == "rename" and isinstance(parent, dict):
            typo = draw(st.sampled_from([key[:-1], key + "s", key.upper(), "layer", "kernal", "Conv2D", ""]))
            parent[typo or "x"] = parent.pop(key)
        elif kind == "replace":
            parent[key] = draw(HOSTILE)
        elif kind == "swap_type":
            parent[key] = swap_type(parent[key])
        elif kind == "wrap":
            for _ in range(draw(st.sampled_from([1, 2, 40, 70]))):
                parent[key] = [parent[key]]
        elif kind == "duplicate_item" and isinstance(parent, list):
            parent.insert(key, parent[key])
    text = dump(data)
    if draw(st.integers(0, 4)) == 0:  # a key written twice in one mapping
        lines = text.splitlines(keepends=True)
        index = draw(st.integers(0, len(lines) - 1))
        text = "".join(lines[:index + 1] + lines[index:])
    return text


@pytest.mark.timeout(120 * LONG)
@settings(FUZZ, max_examples=examples(300))
@given(mutated_specs())
def test_mutated_real_specs_build_or_raise_a_located_spec_error(text):
    check_text(text)


# ---------------------------------------------------------------- (c) garbled YAML text

PRINTABLE_JUNK = st.sampled_from(["", " ", "  ", "\t", "\n", "-", ":", ": ", "{", "}", "[", "]", ",", "&a ",
                                  "*a", "*nowhere", "!!", "!!python/object:os.system ", "!!binary ", "<<: ",
                                  "'", '"', "#", "|", ">", "%YAML 1.1\n", "---\n", "...\n", "? ", "é", "\u2028",
                                  "\ufeff", "1e999", "-0", "0x1F", "~", "$filters", "😀"])


@st.composite
def garbled_texts(draw) -> str:
    text = REAL_SPECS[draw(st.sampled_from(sorted(REAL_SPECS)))]
    if draw(st.booleans()):
        text = text[:draw(st.integers(0, len(text)))]  # truncated
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(text)))
        removed = draw(st.integers(0, 5))
        insert = draw(st.one_of(PRINTABLE_JUNK, st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]),
                                                        max_size=4)))
        text = text[:position] + insert + text[position + removed:]
    if draw(st.integers(0, 5)) == 0:
        text = text.replace("  ", "\t")
    return text


@pytest.mark.timeout(120 * LONG)
@settings(FUZZ, max_examples=examples(300))
@given(garbled_texts())
def test_garbled_yaml_builds_or_raises_a_located_spec_error(text):
    check_text(text)


def alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    return "\n".join(lines) + "\nname: bomb\nlayers: [flatten, {dense: num_classes}]\n"


def spec_with_layers(layers: str) -> str:
    return f"name: hostile\nlayers:\n{layers}"


HOSTILE_DOCUMENTS = {
    "alias_bomb": alias_bomb(),
    "alias_bomb_in_layers": "name: bomb\nlayers: &l [flatten, {dense: num_classes}]\nblocks:\n"
                            + "".join(f"  b{i}: {{layers: [{', '.join([f'{{use: {{block: b{i - 1}}}}}'] * 10)}]}}\n"
                                      for i in range(1, 8)).replace("b0", "b7")
                            + "  b0: {layers: [flatten]}\n",
    "alias_repeat_bomb": "name: bomb\nlayers:\n  - repeat: {n: 1000, layers: &r [repeat: {n: 1000, layers: "
                         "[repeat: {n: 1000, layers: [flatten]}]}]}\n",
    "deep_flow_lists": "name: deep\nlayers: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep_flow_maps": "name: deep\nlayers: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
    "deep_residuals": spec_with_layers("  - " + "residual: {body: [" * 40 + "conv: 4" + "]}" * 40 + "\n"),
    "deep_block_chain": "name: chain\nblocks:\n" + "".join(f"  b{i}: {{layers: [use: b{i + 1}]}}\n" for i in range(40))
                        + "  b40: {layers: [flatten]}\nlayers: [use: b0, dense: num_classes]\n",
    "recursive_block": "name: loop\nblocks: {a: {layers: [use: b]}, b: {layers: [use: a]}}\nlayers: [use: a]\n",
    "many_layers": spec_with_layers("  - scale: 1.0\n" * 20_000),
    "huge_scalar": "name: " + "x" * 2_000_000 + "\nlayers: [flatten, {dense: num_classes}]\n",
    "many_keys": "name: keys\n" + "".join(f"k{i}: {i}\n" for i in range(20_000)) + "layers: [flatten]\n",
    "huge_integer": spec_with_layers("  - conv: " + "9" * 4000 + "\n"),
    "unbalanced_open": spec_with_layers("  - conv: {filters: [8, 8\n  - flatten\n"),
    "unbalanced_close": spec_with_layers("  - conv: 8}]\n"),
    "tabs": "name: tabs\nlayers:\n\t- conv: 8\n",
    "python_tag": "name: !!python/object/apply:os.system [echo hacked]\nlayers: [flatten]\n",
    "merge_key": spec_with_layers("  - conv: {<<: {filters: 3}, kernel: 3}\n"),
    "two_documents": "name: a\nlayers: [flatten]\n---\nname: b\nlayers: [flatten]\n",
    "only_a_comment": "# nothing here\n",
    "a_list": "- conv: 8\n",
    "float_size": spec_with_layers("  - conv: 1e2\n"),
    "absurd_width": spec_with_layers("  - conv: 1000000\n  - conv: 1000000\n  - global_avg_pool\n"
                                     "  - dense: num_classes\n"),
    "absurd_dense": spec_with_layers("  - flatten\n  - dense: 1000000\n  - dense: 1000000\n  - dense: num_classes\n"),
    "absurd_resize": spec_with_layers("  - resize: {height: 8192}\n  - conv: 1000000\n  - global_avg_pool\n"
                                      "  - dense: num_classes\n"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(HOSTILE_DOCUMENTS))
def test_hostile_documents_are_refused_or_checked_without_blowing_up(name):
    check_text(HOSTILE_DOCUMENTS[name])


# ---------------------------------------------------------------- cases the fuzzers found (regressions)

def known_bug(text: str, reason: str):
    """A case the fuzzers once found escaping as another exception (the reason says how)."""
    return pytest.param(text)


KNOWN_BUGS = {
    "control_character": known_bug(
        "name: a\nlayers:\n  - flatten\x00\n  - dense: num_classes\n",
        "yamlio lets yaml.ReaderError (NUL or another control character) escape, not a SpecError"),
    "nan_translation": known_bug(
        spec_with_layers("  - random_translation: {height: .nan}\n  - flatten\n  - dense: num_classes\n"),
        "random_translation height .nan passes the schema (nan is neither < 0 nor > 1); "
        "round(nan) in layers.translation_pixels raises ValueError"),
    "celu_alpha_zero": known_bug(
        spec_with_layers("  - activation: {fn: celu, alpha: 0}\n  - flatten\n  - dense: num_classes\n"),
        "activation alpha has no minimum in schema.json: celu with alpha 0 raises "
        "RuntimeError (ZeroDivisionError) in forward"),
    "celu_alpha_underflows_float32": known_bug(
        spec_with_layers("  - activation: {fn: celu, alpha: 2.7647055469289417e-117}\n  - flatten\n"
                         "  - dense: num_classes\n"),
        "alpha's minimum was 0 exclusive: torch turns 1/alpha into a float32 at the first forward "
        "and raises RuntimeError (found by make fuzz)"),
    "leaky_slope_overflows_float32": known_bug(
        spec_with_layers("  - activation: {fn: leaky_relu, negative_slope: 1.0e+300}\n  - flatten\n"
                         "  - dense: num_classes\n"),
        "negative_slope had no bounds: torch turns it into a float32 at the first forward and "
        "raises RuntimeError"),
    "integer_over_4300_digits": known_bug(
        spec_with_layers("  - conv: " + "9" * 5000 + "\n"),
        "PyYAML's int() of a 5000-digit scalar raises ValueError (Python's 4300-digit limit); "
        "yamlio catches only YAMLError"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", KNOWN_BUGS.values(), ids=KNOWN_BUGS.keys())
def test_known_bugs_are_located_spec_errors(text):
    check_text(text)


@pytest.mark.parametrize("name", ["absurd_dense", "absurd_width"])
def test_absurd_parameter_counts_are_refused_with_their_size(name):
    spec = cnnspec.parse_spec(HOSTILE_DOCUMENTS[name], FILE)
    with torch.device("meta"), pytest.raises(SpecError) as refused:  # meta: nothing is allocated
        infer_shapes(spec, INPUT, CLASSES)
        cnnspec.build_model(spec, INPUT, CLASSES)
    message = str(refused.value)
    assert "param" in message
    sizes = [int(number.replace(",", "")) for number in re.findall(r"\d[\d,]{9,}", message)]
    assert sizes and max(sizes) > 10**9, message  # the size that was refused is named
    assert_located(refused.value, HOSTILE_DOCUMENTS[name])


# ---------------------------------------------------------------- the command line

def bad_inputs(count: int, seed: int = 5) -> list[str]:
    """Deterministically garbled and mutated shipped specs (what the fuzzers draw from)."""
    rng = random.Random(seed)
    texts = [HOSTILE_DOCUMENTS[name] for name in ("deep_flow_lists", "alias_bomb", "tabs", "merge_key")]
    while len(texts) < count:
        text = REAL_SPECS[rng.choice(sorted(REAL_SPECS))]
        position = rng.randrange(len(text))
        junk = rng.choice(["", "\t", "{", "]", ": :", "-1", "&a", "*b", "1e999", "'"])
        texts.append(text[:position] + junk + text[position + rng.randrange(8):])
    return texts


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CNNSPEC_DEBUG": ""}
    return subprocess.run([sys.executable, "-m", "cnnspec.cli", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


@pytest.mark.timeout(150)
def test_validate_prints_one_line_per_bad_input_and_never_a_traceback(tmp_path):
    paths = []
    for index, text in enumerate(bad_inputs(20)):
        paths.append(tmp_path / f"bad_{index:02d}.yaml")
        paths[-1].write_text(text, encoding="utf-8")
    result = run_cli("validate", *map(str, paths))
    assert "Traceback" not in result.stderr + result.stdout
    errors = result.stderr.splitlines()
    assert all(line.startswith("error: ") for line in errors), result.stderr
    assert len(errors) + len(result.stdout.splitlines()) == len(paths)
    assert len(errors) >= 10 and result.returncode == 1
    for line in errors:
        assert re.match(r"error: \S+bad_\d\d\.yaml(:\d+:\d+)?: ", line), line


@pytest.mark.timeout(60)
def test_validate_with_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(HOSTILE_DOCUMENTS["unbalanced_open"], encoding="utf-8")
    result = run_cli("validate", "--debug", str(path))
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "SpecError" in result.stderr


# ================================================================ the other readers
# Each generator knows its format's structure, so most cases get deep into the reader
# instead of failing at the first byte. The property is the same everywhere: the
# reader succeeds, or raises a CnnspecError whose message is one line; never another
# exception, never a hang, never a memory blow-up.

from cnnspec.errors import CnnspecError  # noqa: E402


def one_line_project_error(call, *args, seconds: float = 10.0, megabytes: int = 512, **kwargs):
    """call(*args, **kwargs) inside the bounds; its result, or the CnnspecError it raised."""
    with bounded(seconds, megabytes):
        try:
            return call(*args, **kwargs)
        except CnnspecError as error:
            assert "\n" not in str(error).strip(), f"not one line: {error!r}"
            assert str(error).strip(), "an empty message"
            return error


# ---------------------------------------------------------------- expressions

NUMBERS = st.one_of(st.integers(0, 64).map(str), st.sampled_from(
    ["0", "0.0", "1e999", "1e-999", "9" * 40, "9" * 400, "1e15", "2.5", "00", "1e308", "4294967296"]))
ARGUMENTS = st.sampled_from(["$width", "$in_channels", "$zero", "$big", "$missing", "$"])
FUNCTION_NAMES = st.sampled_from(["round", "floor", "ceil", "min", "max", "make_divisible", "eval", "pow"])


def expression_texts(depth: int = 0) -> st.SearchStrategy:
    """Arithmetic as users (and attackers) write it: numbers, block arguments, the six
    functions with right and wrong argument counts, operators, parentheses, deep nesting."""
    atom = st.one_of(NUMBERS, ARGUMENTS)
    if depth >= 4:
        return atom
    inner = st.deferred(lambda: expression_texts(depth + 1))
    operator = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "^", ""])
    return st.one_of(
        atom,
        st.tuples(inner, operator, inner).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        inner.map(lambda e: f"({e})"),
        inner.map(lambda e: f"-{e}"),
        st.tuples(FUNCTION_NAMES, st.lists(inner, min_size=0, max_size=4)).map(
            lambda t: f"{t[0]}({', '.join(t[1])})"),
        st.tuples(st.integers(20, 400), st.sampled_from(["(", "-", "round("])).map(
            lambda t: t[1] * t[0] + "1" + (")" * t[0] if t[1] != "-" else "")),
        st.integers(100, 600).map(lambda n: " + ".join(["1"] * n)),
    )


def spec_using(expression: str) -> str:
    quoted = json.dumps(expression)  # a YAML double-quoted string
    return (f"name: expressions\nblocks:\n  unit:\n    args: {{width: 8, zero: 0, big: 1000000000000}}\n"
            f"    layers:\n      - conv: {{filters: {quoted}, kernel: 3}}\n"
            f"layers:\n  - use: {{block: unit, width: 4}}\n  - conv: {{filters: {quoted}}}\n"
            f"  - global_avg_pool\n  - dense: num_classes\n")


@pytest.mark.timeout(120 * LONG)
@settings(FUZZ, max_examples=examples(300))
@given(expression_texts())
def test_expressions_evaluate_or_raise_a_located_spec_error(expression):
    from cnnspec.spec.expressions import ExpressionError, evaluate, parse

    with bounded(5):
        try:
            evaluate(parse(expression.replace("$in_channels", "3").replace("$", "")))
        except ExpressionError as error:
            assert 0 <= error.offset <= len(expression)
    text = spec_using(expression)
    with bounded(10):
        try:
            spec = cnnspec.parse_spec(text, FILE)
            infer_shapes(spec, INPUT, CLASSES)
        except SpecError as error:
            assert_located(error, text)


# ---------------------------------------------------------------- params.yaml

def params_values() -> st.SearchStrategy:
    return st.one_of(HOSTILE, st.integers(-3, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=12), st.sampled_from(["auto", "cpu", "cuda:9", "~", "fail", "skip",
                                                            "stretch", "folder", "csv", "cifar10"]))


@st.composite
def params_documents(draw) -> str:
    """The shipped params.yaml with a few keys set to hostile values, renamed, removed or
    wrapped, and sometimes garbled as text."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(sorted(data)))
        if not isinstance(data[section], dict) or not data[section]:
            data[section] = draw(params_values())
            continue
        key = draw(st.sampled_from(sorted(data[section])))
        action = draw(st.sampled_from(["value", "delete", "rename", "wrap", "section"]))
        if action == "value":
            data[section][key] = draw(params_values())
        elif action == "delete":
            del data[section][key]
        elif action == "rename":
            data[section][key + draw(st.sampled_from(["s", "_", "X"]))] = data[section].pop(key)
        elif action == "wrap":
            data[section][key] = [data[section][key]]
        else:
            data[section] = draw(params_values())
    data.get("model", {}).pop("plugins", None) if isinstance(data.get("model"), dict) else None
    text = dump(data)
    if draw(st.integers(0, 3)) == 0:
        position = draw(st.integers(0, len(text)))
        text = text[:position] + draw(PRINTABLE_JUNK) + text[position:]
    return text


@pytest.mark.timeout(120 * LONG)
def test_params_files_load_or_raise_one_line(tmp_path):
    from cnnspec.pipeline.params import load_params

    path = tmp_path / "params.yaml"
    sections = ["recipe", "data", "train", "evaluate", "export"]
    load_params(ROOT / "params.yaml", sections)  # the first call imports and compiles the schema

    @settings(FUZZ, max_examples=examples(150))
    @given(params_documents())
    def load(text):
        path.write_text(text, encoding="utf-8")
        one_line_project_error(load_params, path, sections)

    load()


# ---------------------------------------------------------------- image files

@pytest.fixture(scope="module")
def fashion_png_bytes():
    """Real images: the first Fashion-MNIST test images, written as PNG."""
    import io as bytes_io

    from PIL import Image

    from tests.imagefiles import fashion_subset

    images = fashion_subset(1, 8)[2]
    encoded = []
    for image in images:
        buffer = bytes_io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


@st.composite
def image_bytes(draw, real_pngs) -> bytes:
    """A real Fashion-MNIST PNG re-encoded in another format or mode, then maybe damaged:
    truncated, bytes flipped, its header's width and height made huge."""
    import io as bytes_io

    import numpy as np
    from PIL import Image

    image = Image.open(bytes_io.BytesIO(draw(st.sampled_from(real_pngs))))
    mode = draw(st.sampled_from(["L", "1", "P", "LA", "RGB", "RGBA", "I;16", "I", "F", "CMYK"]))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image, dtype=np.uint16) * 257)
    elif mode in ("I", "F"):
        scale = draw(st.sampled_from([1.0, 1 / 255, 1e6, -1.0]))
        image = Image.fromarray((np.asarray(image, dtype=np.float32) * scale).astype(
            np.int32 if mode == "I" else np.float32), mode=mode)
    else:
        image = image.convert(mode)
    formats = {"L": ["PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"], "1": ["PNG", "BMP", "TIFF"],
               "P": ["PNG", "GIF", "BMP"], "LA": ["PNG", "WEBP"], "RGB": ["PNG", "JPEG", "WEBP", "TIFF"],
               "RGBA": ["PNG", "WEBP", "TIFF"], "I;16": ["PNG", "TIFF"], "I": ["TIFF"], "F": ["TIFF"],
               "CMYK": ["JPEG", "TIFF"]}
    buffer = bytes_io.BytesIO()
    image.save(buffer, format=draw(st.sampled_from(formats[mode])))
    data = bytearray(buffer.getvalue())
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "huge_header", "splice"]))
    if damage == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif damage == "flip":
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= draw(st.integers(1, 255))
    elif damage == "huge_header" and data[:8] == b"\x89PNG\r\n\x1a\n":
        data[16:24] = (60000).to_bytes(4, "big") * 2  # IHDR width and height: 3.6 billion pixels
    elif damage == "splice":
        data[draw(st.integers(0, len(data))):] = draw(st.binary(max_size=64))
    return bytes(data)


@pytest.mark.timeout(120 * LONG)
def test_image_files_decode_or_raise_one_line(fashion_png_bytes, tmp_path):
    from cnnspec.data.images import read_image

    path = tmp_path / "case.img"

    @settings(FUZZ, max_examples=examples(300))
    @given(image_bytes(fashion_png_bytes), st.sampled_from([1, 3]),
           st.sampled_from(["stretch", "center_crop"]))
    def decode(data, channels, resize):
        path.write_bytes(data)
        for source in (path, data):
            result = one_line_project_error(read_image, source, channels, (28, 28), resize, seconds=5, megabytes=256)
            if not isinstance(result, CnnspecError):
                assert result.shape == (channels, 28, 28) and result.dtype.name == "uint8"

    decode()


# ---------------------------------------------------------------- CSV manifests

CSV_PATHS = st.one_of(st.sampled_from(["pictures/0.png", "pictures/1.png", "pictures/2.png", "pictures/3.png",
                                       "pictures/missing.png", "pictures/pipe.png", "pictures/loop.png",
                                       "pictures/notes.txt", "/etc/passwd", "../outside.png", "pictures",
                                       "pictures/x\x00y.png", "pictures/\u2028.png", "", " ", "pictures/0.png"]),
                      st.text(max_size=12))
CSV_LABELS = st.one_of(st.sampled_from(["bag", "boot", "shirt", "", " ", "bag", "boot", "\x00"]), st.text(max_size=6))
CSV_SPLITS = st.sampled_from(["", "train", "val", "test", "TRAIN", "other"])


@st.composite
def csv_manifests(draw) -> bytes:
    """A manifest over real images: rows of existing, missing, special and hostile paths,
    labels and splits; sometimes a renamed header, a BOM, stray quotes or bad UTF-8."""
    import csv as csv_module
    import io as text_io

    header = draw(st.sampled_from([["path", "label"], ["path", "label", "split"], ["file", "label"],
                                   ["path"], ["label", "path", "split"]]))
    rows = draw(st.lists(st.fixed_dictionaries({"path": CSV_PATHS, "label": CSV_LABELS, "split": CSV_SPLITS}),
                         min_size=0, max_size=14))
    rows += [{"path": f"pictures/{i}.png", "label": ["bag", "boot"][i % 2], "split": ""} for i in range(8)]
    buffer = text_io.StringIO()
    writer = csv_module.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(column, "x") for column in header])
    data = buffer.getvalue().encode("utf-8", errors="surrogatepass")
    extra = draw(st.sampled_from(["", "", "bom", "quote", "latin1", "blank"]))
    if extra == "bom":
        data = b"\xef\xbb\xbf" + data
    elif extra == "quote":
        data += b'"pictures/0.png,bag\n'
    elif extra == "latin1":
        data += "pictures/caf\xe9.png,bag\n".encode("latin-1")
    elif extra == "blank":
        data += b"\n,\n\n"
    return data


@pytest.fixture(scope="module")
def csv_folder(tmp_path_factory, fashion_png_bytes):
    folder = tmp_path_factory.mktemp("csvfuzz")
    (folder / "pictures").mkdir()
    for index in range(8):
        (folder / "pictures" / f"{index}.png").write_bytes(fashion_png_bytes[index])
    (folder / "pictures" / "notes.txt").write_text("not an image")
    os.mkfifo(folder / "pictures" / "pipe.png")
    (folder / "pictures" / "loop.png").symlink_to(folder / "pictures" / "loop.png")
    return folder


@pytest.mark.timeout(180 * LONG)
def test_csv_manifests_prepare_or_raise_one_line(csv_folder):
    from cnnspec.data.user_datasets import prepare_image_dataset
    from cnnspec.pipeline.params import load_params

    data = load_params(ROOT / "params.yaml", ["data"])["data"]
    manifest = csv_folder / "labels.csv"

    @settings(FUZZ, max_examples=examples(100))
    @given(csv_manifests(), st.sampled_from(["fail", "skip"]), st.sampled_from(["", "split"]))
    def prepare(text, bad_images, split_column):
        manifest.write_bytes(text)
        options = {**data, "dataset": "csv", "source": str(manifest), "image_size": [16, 16], "channels": 1,
                   "bad_images": bad_images, "val_split": 0.2, "test_split": 0.2,
                   "csv": {"path_column": "path", "label_column": "label", "split_column": split_column}}
        one_line_project_error(prepare_image_dataset, options, csv_folder / "prepared", workers=1,
                               log=lambda line: None, seconds=15)
        assert not [p for p in csv_folder.iterdir() if p.name.startswith(".prepared")], "a temporary was left"

    prepare()


# ---------------------------------------------------------------- checkpoint bytes

@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    """A real checkpoint of a small model, as bytes."""
    from cnnspec.models.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("checkpoint")
    spec = cnnspec.parse_spec("name: tiny\nlayers:\n  - conv: {filters: 4}\n  - bn\n  - global_avg_pool\n"
                              "  - dense: num_classes\n", "tiny.yaml")
    model = cnnspec.build_model(spec, (1, 8, 8), 3).eval()
    meta = {"classes": ["a", "b", "c"], "mean": [0.5], "std": [0.25], "input_shape": [1, 8, 8]}
    save_checkpoint(folder / "model.pt", model, spec, meta, {"model": {"plugins": ["os"]}}, 0, 0)
    return (folder / "model.pt").read_bytes()


def rewritten_checkpoints(draw, original: bytes) -> bytes:
    """The real checkpoint re-saved with one field replaced by a hostile value."""
    import io as bytes_io

    checkpoint = torch.load(bytes_io.BytesIO(original), weights_only=True)
    key = draw(st.sampled_from(sorted(checkpoint) + ["extra"]))
    replacement = draw(st.one_of(HOSTILE, st.just(torch.zeros(2)), st.just({"w": torch.ones(1)}),
                                 st.just([torch.zeros(1)]), st.text(max_size=8),
                                 st.just("name: x\nlayers: [{blur: 3}, flatten, {dense: num_classes}]\n"),
                                 st.just("cnnspec-checkpoint/2"), st.just("cnnspec-resume/1")))
    if draw(st.booleans()) and key != "extra":
        del checkpoint[key]
    else:
        checkpoint[key] = replacement
    buffer = bytes_io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


@st.composite
def checkpoint_files(draw, original: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "rewrite", "rewrite", "pickle", "random"]))
    data = bytearray(original)
    if kind == "truncate":
        return bytes(data[:draw(st.integers(0, len(data)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 6))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= draw(st.integers(1, 255))
        return bytes(data)
    if kind == "splice":
        position = draw(st.integers(0, len(data)))
        return bytes(data[:position] + draw(st.binary(max_size=256)) + data[position:])
    if kind == "rewrite":
        return rewritten_checkpoints(draw, original)
    if kind == "pickle":
        import pickle

        value = draw(st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=5), st.floats()),
                                  lambda children: st.one_of(st.lists(children, max_size=3),
                                                             st.dictionaries(st.text(max_size=5), children,
                                                                             max_size=3)), max_leaves=8))
        return pickle.dumps(value, protocol=draw(st.integers(0, 5)))
    return draw(st.binary(max_size=512))


@pytest.mark.timeout(180 * LONG)
def test_checkpoint_bytes_load_or_raise_one_line_and_import_nothing(checkpoint_bytes, tmp_path):
    from cnnspec.models.checkpoint import load_network

    path = tmp_path / "model.pt"
    modules_before = set(sys.modules)

    @settings(FUZZ, max_examples=examples(300))
    @given(checkpoint_files(checkpoint_bytes))
    def load(data):
        path.write_bytes(data)
        result = one_line_project_error(load_network, path, seconds=10)
        if not isinstance(result, CnnspecError):
            model, checkpoint = result
            with torch.no_grad():
                assert model(torch.zeros(1, *checkpoint["input_shape"])).shape == (1, checkpoint["num_classes"])

    load()
    imported = {name for name in set(sys.modules) - modules_before if not name.startswith(("torch", "PIL", "numpy"))}
    assert not any(name.startswith("cnnspec_plugin_") for name in imported), imported


# ---------------------------------------------------------------- a mirror's HTTP responses

STATUS_LINES = st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 206 Partial", b"HTTP/1.0 302 Found",
                                b"HTTP/1.1 301 Moved", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 416 Range",
                                b"HTTP/1.1 503 Busy", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK",
                                b"HTTP/1.1 2000 OK", b"HTTP/9 200", b"ICY 200 OK", b"HTTP/1.1 200 \x1b[2J\n"])
HEADER_NAMES = st.sampled_from([b"Content-Length", b"Content-Range", b"Location", b"Transfer-Encoding",
                                b"Content-Encoding", b"X-Other"])
HEADER_VALUES = st.one_of(
    st.sampled_from([b"0", b"10", b"-5", b"9" * 5000, "\u00b2".encode("latin-1"), b"1, 2", b"chunked",
                     b"bytes 0-9/10", b"bytes */*", b"gzip", b"/file", b"http://[::1/x", b"ftp://127.0.0.1:1/x",
                     b"file:///etc/passwd", b"data:,x", b"http://127.0.0.1:1/x", b"//", b"\x00", b""]),
    st.binary(max_size=40).map(lambda value: value.replace(b"\r", b"").replace(b"\n", b"")))
CHUNKED_BODIES = st.sampled_from([b"5\r\nhello\r\n0\r\n\r\n", b"f" * 70 + b"\r\nx", b"zz\r\n", b"-1\r\n",
                                  b"5;ext=1\r\nhello\r\n0\r\n\r\n"])


@st.composite
def http_responses(draw) -> bytes:
    """What a hostile mirror answers: a status line, headers with lying or garbled values,
    a body (chunked or not); or bytes of no protocol at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5))
    head = draw(STATUS_LINES) + b"".join(b"\r\n" + name + b": " + value for name, value in headers)
    body = draw(st.one_of(CHUNKED_BODIES, st.binary(max_size=300)))
    return head + b"\r\n\r\n" + body


@pytest.mark.timeout(120 * LONG)
def test_http_responses_download_or_raise_one_line(tmp_path):
    import socket
    import threading

    from cnnspec.data.download import fetch

    answer = {"bytes": b""}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            with connection:
                try:
                    connection.settimeout(1)
                    connection.recv(65536)  # the request
                    connection.sendall(answer["bytes"])
                except OSError:
                    pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/cifar-10-python.tar.gz"
    destination = tmp_path / "raw" / "cifar-10-python.tar.gz"

    @settings(FUZZ, max_examples=examples(150))
    @given(http_responses())
    def download(response):
        answer["bytes"] = response
        one_line_project_error(fetch, url, destination, None, progress=False, timeout=0.5, attempts=2,
                               backoff=0, max_bytes=4096, seconds=5)
        assert not [path.name for path in destination.parent.iterdir() if path.name != destination.name]

    try:
        download()
    finally:
        stop.set()
        server.join(5)
        listener.close()
