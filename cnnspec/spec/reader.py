"""From YAML text to a checked, expanded tree of LayerNodes.

    spec = load_spec("specs/simcnn.yaml")      # or parse_spec(text, file)

The steps, top to bottom in this file:
1. read YAML with locations (yamlio), validate the top level against the spec schema
   (assembled by the layer registry from every registered type);
2. walk `layers`: split each item into TYPE and options (shorthand `dropout: 0.5`
   becomes `{rate: 0.5}`), expand `repeat` inline and `use` into a `group` node
   (block arguments substituted, so `$filters` = -2 is reported where it is passed);
3. for every other layer: merge `defaults` under its options, validate them against
   the type's sub-schema, fill the schema's defaults, and expand child layer lists;
4. name every layer (`conv_3`, or the name the user wrote, which must be unique).

Every problem is a SpecError `file:line:col: key: message` pointing at the value or
key at fault, with "did you mean ...?" for misspellings.
"""
from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field

import jsonschema

import cnnspec.layers  # noqa: F401 - registers the built-in layer types
from cnnspec.errors import SpecError
from cnnspec.layers.registry import LAYERS, schema_version, spec_schema
from cnnspec.spec.expressions import (
    IN_CHANNELS,
    THIS_LAYER,
    Deferred,
    ExpressionError,
    arguments_of,
    bind,
    evaluate,
    is_expression,
    needs_shapes,
    parse,
)
from cnnspec.spec.nodes import LayerNode, Location, Spec, walk
from cnnspec.spec.schema_errors import Strict, describe_value, did_you_mean, explain, join_key, key_path, properties_of
from cnnspec.spec.yamlio import LocatedDict, LocatedList, load_mapping, plain, read_bounded_text, where_in


def layer_schemas() -> dict:
    """Every word that may start a layer list item: the registered layer types with a
    schema, plus `repeat` and `use`, each with its $defs entry."""
    return _layer_schemas(schema_version())


@functools.lru_cache(maxsize=4)
def _layer_schemas(version: int) -> dict:
    return {name: sub for name, sub in spec_schema()["$defs"].items() if sub.get("x-layer")}

ARGUMENT = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")

MAX_LAYERS = 10_000   # after expanding every repeat and block
MAX_NESTING = 32      # layer lists inside layer lists (residual bodies, blocks, repeats)
MAX_BLOCK_DEPTH = 16  # blocks using blocks


# ---------------------------------------------------------------- messages

# Names other frameworks use for cnnspec's layer types, for "did you mean".
ALIASES = {"conv2d": "conv", "convolution": "conv", "batchnorm": "bn", "batchnorm2d": "bn",
           "batchnormalization": "bn", "norm": "bn", "linear": "dense", "fc": "dense",
           "fullyconnected": "dense", "maxpool": "max_pool", "maxpool2d": "max_pool",
           "maxpooling2d": "max_pool", "avgpool": "avg_pool", "averagepooling2d": "avg_pool",
           "globalaveragepooling2d": "global_avg_pool", "adaptiveavgpool2d": "global_avg_pool",
           "relu": "activation", "gelu": "activation", "softmax": "activation",
           "zeropadding2d": "pad", "spatialdropout2d": "spatial_dropout", "block": "use",
           "layernorm": "layer_norm", "layernorm2d": "layer_norm", "groupnorm": "group_norm",
           "layerscale": "layer_scale", "stochasticdepth": "drop_path", "droppath": "drop_path",
           "channelshuffle": "channel_shuffle", "chunk": "channel_split", "split": "channel_split",
           "adaptivemaxpool2d": "adaptive_max_pool"}

def plugin_hint() -> str:
    """Where a layer type no near name explains may come from: the user's code, or a newer cnnspec."""
    from cnnspec.version import cnnspec_version

    return (" (a layer type from your own code needs --plugin FILE, or model.plugins in params.yaml; "
            f"one from a newer cnnspec than this one, {cnnspec_version()}, needs that version)")


def did_you_mean_type(word) -> str:
    alias = ALIASES.get(str(word).lower().replace("_", ""))
    return f" (did you mean '{alias}'?)" if alias else did_you_mean(word, layer_schemas()) or plugin_hint()


def fail(message: str, where: Location, key: str | None = None):
    raise SpecError(message, where.file, where.line, where.col, key)


# ---------------------------------------------------------------- schema checks

# Defaults may leave out required options: the layer that gets them supplies the rest.
WithoutRequired = jsonschema.validators.extend(Strict, {"required": lambda *args: None})


def validator_for(definition: str, kind=Strict):
    """A validator for one entry of $defs (or the whole schema for definition '')."""
    return _validator(definition, kind, schema_version())


@functools.cache
def _validator(definition: str, kind, version: int):
    schema = spec_schema()
    if definition:
        schema = {"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    return kind(schema)


def locate(root, path) -> tuple[Location, object]:
    """Where the value at `path` inside `root` is written, and that value."""
    container, where, value = None, getattr(root, "where", Location(None)), root
    for part in path:
        container, value = value, value[part]
        where = where_in(container, part)
    return where, value


def check(instance, definition: str, key: str, kind=Strict, skip=lambda path: False):
    """Validate `instance` against a $defs entry; raise the first error in the file
    (the deepest where several share a place) as a SpecError."""
    errors = [e for e in validator_for(definition, kind).iter_errors(instance)
              if not skip(list(e.absolute_path))]
    if not errors:
        return
    # A misspelled required key shows up twice, as unknown and as missing: say "unknown".
    with_unknown_keys = {id(e.instance) for e in errors
                         if e.validator in ("additionalProperties", "unevaluatedProperties")}
    errors = [e for e in errors
              if not (e.validator == "required" and id(e.instance) in with_unknown_keys)]
    found = []
    for error in errors:
        explained = explain(error, spec_schema())
        if explained is None:
            continue
        message, about = explained
        path = list(error.absolute_path)
        where, value = locate(instance, path)
        full_key = key_path(path, key)
        if about is not None:
            if isinstance(value, dict) and about in getattr(value, "key_where", {}):
                where = value.key_where[about]
            full_key = join_key(full_key, about)
        found.append(((where.line or 0, where.col or 0, -len(path)), message, where, full_key))
    _, message, where, full_key = min(found, key=lambda item: item[0])
    fail(message, where, full_key)


def inside_a_layer(path) -> bool:
    """True for paths below an item of a layer list: spec.py checks those itself."""
    return any(part == "layers" and i + 1 < len(path) for i, part in enumerate(path))


# ---------------------------------------------------------------- block arguments

def find_argument(data, where: Location):
    """The first `$arg` placeholder in `data` and where it is written, or None."""
    if isinstance(data, str):
        named = set(re.findall(r"\$([A-Za-z_]\w*)", data)) - {IN_CHANNELS}
        return (data, where) if named else None
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        found = find_argument(value, where_in(data, key))
        if found:
            return found
    return None


def substitute(data, values: dict, block: str, where: Location, call: int | None = None, path: str = ""):
    """A copy of `data` with every `$arg` replaced by (value, where the value is written)
    and every expression evaluated (or, when it needs `$in_channels`, made a Deferred value
    bound to the block call `call`). With call None the block is only checked: its names
    must be declared arguments."""
    if isinstance(data, str) and ARGUMENT.match(data):
        name = ARGUMENT.match(data).group(1)
        if name == IN_CHANNELS:
            if call is None and block is not None:  # only checking the block
                return data, where
            return Deferred(("in", THIS_LAYER if call is None else call, 0), data, where), where
        if name not in values:
            fail(f"'{data}' is not an argument of block '{block}'{did_you_mean(name, values)}",
                 where, path or data)
        return copy.deepcopy(values[name][0]), values[name][1]
    if is_expression(data):
        return expression_value(data, values, block, where, call, path), where
    if isinstance(data, dict):
        copied = LocatedDict(where=getattr(data, "where", where))
        for key, value in data.items():
            copied[key], copied.value_where[key] = substitute(value, values, block, where_in(data, key), call,
                                                              join_key(path, key))
            copied.key_where[key] = getattr(data, "key_where", {}).get(key, where)
        return copied, where
    if isinstance(data, list):
        pairs = [substitute(item, values, block, where_in(data, i), call, f"{path}[{i}]")
                 for i, item in enumerate(data)]
        return LocatedList([p[0] for p in pairs], where=getattr(data, "where", where),
                           item_where=[p[1] for p in pairs]), where
    return data, where


def at_offset(where: Location, offset: int) -> Location:
    """Where the character `offset` of a value written at `where` is."""
    if where.col is None:
        return where
    return Location(where.file, where.line, where.col + offset + where.quoted)


def parsed(text: str, where: Location, path: str | None = None):
    try:
        return parse(text)
    except ExpressionError as problem:
        hint = ("; inside { } a comma ends the value: quote the expression or write the "
                "options one per line") if text.count("(") > text.count(")") else ""
        fail(f"'{shortened(text)}': {problem.message}{hint}", at_offset(where, problem.offset), path)


def shortened(text: str, most: int = 60) -> str:
    """An expression as an error message quotes it: whole, or its start and end, on one
    line (a line break or other control character in it written as an escape)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= most else f"{text[:most - 20]}...{text[-15:]}"


def expression_value(text: str, values: dict, block: str | None, where: Location, call: int | None,
                     path: str | None = None):
    """The value of an expression: a number, or a Deferred one when it needs $in_channels.
    `path`: the key it is written under, for the errors."""
    tree = parsed(text, where, path)

    def lookup(name, offset):
        if name == IN_CHANNELS:
            if call is None and block is not None:  # only checking the block
                return ("num", 1, offset)
            return ("in", THIS_LAYER if call is None else call, offset)
        if name not in values:
            if block is None:
                fail(f"'{text}': ${name} can only be used inside a block", at_offset(where, offset), path)
            fail(f"'{text}': '${name}' is not an argument of block '{block}'{did_you_mean(name, values)}",
                 at_offset(where, offset), path)
        value = values[name][0]
        if isinstance(value, Deferred):
            return value.tree
        if value is None and call is None:  # only checking a block's names
            return ("num", 1, offset)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(f"'{text}': ${name} is {describe_value(value)}, not a number", at_offset(where, offset), path)
        return ("num", value, offset)

    tree = bind(tree, lookup)
    if call is None and block is not None:
        return text
    if needs_shapes(tree):
        return Deferred(tree, text, where)
    return evaluated(tree, text, where, path=path)


def evaluated(tree, text: str, where: Location, block_inputs: dict | None = None, path: str | None = None):
    try:
        return evaluate(tree, block_inputs)
    except ExpressionError as problem:
        fail(f"'{shortened(text)}': {problem.message}", at_offset(where, problem.offset), path)


# ---------------------------------------------------------------- expansion

@dataclass
class Expansion:
    """What walking the layer lists needs besides the list itself."""

    defaults: dict
    blocks: dict
    in_block: bool = False
    calls: tuple = ()          # blocks being expanded, outermost first
    depth: int = 0
    count: list = field(default_factory=lambda: [0])   # shared layer counter

    def deeper(self, **changes) -> Expansion:
        values = {**self.__dict__, "depth": self.depth + 1, **changes}
        return Expansion(**values)


def split_layer(item, where: Location, path: str) -> tuple[str, LocatedDict, Location]:
    """TYPE, its options (shorthand resolved) and where TYPE is written."""
    if isinstance(item, str):
        layer_type, value, type_where = item, None, where
    elif isinstance(item, dict) and len(item) == 1:
        layer_type = next(iter(item))
        value, type_where = item[layer_type], item.key_where[layer_type]
    elif isinstance(item, dict):
        keys = list(item)
        second = item.key_where[keys[1]] if keys else where
        if not keys:
            fail("an empty layer: write TYPE or TYPE: {options}", where, path)
        fail(f"a layer is one TYPE: options pair, found {len(keys)} keys: {', '.join(keys)}"
             " (are the options indented under the type?)", second, path)
    else:
        fail(f"a layer must be TYPE or TYPE: {{options}}, not {describe_value(item)}", where, path)
    if layer_type not in layer_schemas():
        fail(f"unknown layer type '{layer_type}'{did_you_mean_type(layer_type)}",
             type_where, path)
    shorthand = layer_schemas()[layer_type].get("x-shorthand")
    if value is None:
        options = LocatedDict(where=type_where)
    elif isinstance(value, dict):
        options = value
    elif shorthand:
        value_where = item.value_where[layer_type]
        options = LocatedDict({shorthand: value}, where=value_where)
        options.key_where[shorthand] = options.value_where[shorthand] = value_where
    else:
        required = layer_schemas()[layer_type].get("required") or []
        shown = value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else "..."
        options = ", ".join(f"{key}: {shown if key == required[0] else '...'}" for key in required)
        hint = f"write {layer_type}: {{{options}}}" if required else "`cnnspec layers` lists its options"
        fail(f"{layer_type} takes a mapping of options, not {describe_value(value)} (it has no shorthand: "
             f"{hint})", item.value_where[layer_type], join_key(path, layer_type))
    return layer_type, options, type_where


def expand_list(items, prefix: str, state: Expansion) -> list[LayerNode]:
    if state.depth > MAX_NESTING:
        fail(f"layers nested deeper than {MAX_NESTING} levels", items.where, prefix)
    nodes = []
    for index, item in enumerate(items):
        path = f"{prefix}[{index}]"
        layer_type, options, where = split_layer(item, items.where_of(index), path)
        options, present = switched(options, join_key(path, layer_type), state.in_block)
        if not present:
            continue
        expand = EXPANDERS.get(layer_type, expand_layer)
        nodes.extend(expand(layer_type, options, where, path, state))
    return nodes


def switched(options, key: str, in_block: bool = False) -> tuple:
    """A layer's `when: BOOL` (any layer, `use` included: an optional part of a block, switched
    by an argument, `when: $se`): (the options without it, whether the layer is there)."""
    if not isinstance(options, dict) or "when" not in options:
        return options, True
    value = options["when"]
    if isinstance(value, str) and value.startswith("$"):
        if not in_block:
            fail(f"'{value}' can only be used inside a block", options.where_of("when"), join_key(key, "when"))
        value = True  # a block checked before any use of it
    if not isinstance(value, bool):
        fail(f"when: expected true or false (or a block argument holding one), not {describe_value(value)}",
             options.where_of("when"), join_key(key, "when"))
    return options.changed(drop=("when",)), value


def count_layer(where: Location, path: str, state: Expansion) -> None:
    state.count[0] += 1
    if state.count[0] > MAX_LAYERS:
        fail(f"the spec expands to more than {MAX_LAYERS:,} layers", where, path)


def expand_repeat(layer_type, options, where, path, state) -> list[LayerNode]:
    key = join_key(path, "repeat")
    if not state.in_block:  # `n: 2 * 3`, as in any other option outside a block
        refuse_arguments_outside_blocks(options, key, state)
        if isinstance(options, dict) and is_expression(options.get("n")):
            options = options.changed(n=expression_value(options["n"], {}, None, options.where_of("n"), None,
                                                         f"{key}.n"))
    check(options, "repeat", key, skip=inside_a_layer)
    inner = state.deeper()
    nodes = []
    for _ in range(options["n"]):
        nodes.extend(expand_list(options["layers"], f"{key}.layers", inner))
    return nodes


def block_arguments(block: str, definition: dict, call: LocatedDict, key: str, block_call: int) -> dict:
    """Argument name -> (value, where written): the call's values over the defaults."""
    declared = definition.get("args") or LocatedDict()
    values = {}
    for name, value in call.items():
        if name in ("block", "name", "trainable"):
            continue
        if name not in declared:
            hint = did_you_mean(name, declared) or (
                f"; it takes: {', '.join(declared)}" if declared else "; it takes no arguments")
            fail(f"block '{block}' has no argument '{name}'{hint}", call.key_where[name],
                 join_key(key, name))
        if is_expression(value):  # a call outside any block: `out: $in_channels * 2`
            value = expression_value(value, {}, None, call.where_of(name), block_call, join_key(key, name))
        values[name] = (value, call.where_of(name))
    passed = dict(values)
    for name, default in declared.items():
        if name not in values:
            if default is None:
                fail(f"block '{block}' needs argument '{name}'", call.where, join_key(key, name))
            if is_expression(default):  # `squeeze: max(1, $out // 4)`: over the arguments before it
                written = f"blocks.{block}.args.{name}"
                later = [used for used, _ in arguments_of(parsed(default, declared.where_of(name), written))
                         if used in declared and used not in passed and used != IN_CHANNELS]
                if later:
                    fail(f"block '{block}': the default of '{name}' uses ${later[0]}, which is declared after "
                         f"it; a default may use only the arguments declared before it",
                         declared.where_of(name), written)
                default = expression_value(default, passed, block, declared.where_of(name), block_call, written)
            values[name] = passed[name] = (default, declared.where_of(name))
    return values


def expand_use(layer_type, options, where, path, state) -> list[LayerNode]:
    key = join_key(path, "use")
    check(options, "use", key)
    refuse_arguments_outside_blocks(options, key, state)
    block = options["block"]
    if block not in state.blocks:
        hint = did_you_mean(block, state.blocks) or (
            f"; blocks defined: {', '.join(state.blocks)}" if state.blocks else "; no blocks are defined")
        fail(f"undefined block '{block}'{hint}", options.where_of("block"), join_key(key, "block"))
    if block in state.calls:
        cycle = " -> ".join(state.calls[state.calls.index(block):] + (block,))
        fail(f"recursive block use: {cycle}", options.where_of("block"), join_key(key, "block"))
    if len(state.calls) >= MAX_BLOCK_DEPTH:
        chain = " -> ".join(state.calls[:3] + ("...",) + state.calls[-2:] + (block,))
        fail(f"blocks nested deeper than {MAX_BLOCK_DEPTH} levels: {chain}",
             options.where_of("block"), join_key(key, "block"))
    definition = state.blocks[block]
    count_layer(where, path, state)
    block_call = state.count[0]  # this call's $in_channels: its input's channels
    values = block_arguments(block, definition, options, key, block_call)
    layers, _ = substitute(definition["layers"], values, block, definition.where_of("layers"), block_call,
                           f"blocks.{block}.layers")
    children = expand_list(layers, f"{path} (block {block}) > layers",
                           state.deeper(in_block=True, calls=state.calls + (block,)))
    group_options = {"block": block, "args": {name: value for name, (value, _) in values.items()},
                     "trainable": options.get("trainable", layer_options("use")["trainable"]["default"])}
    return [LayerNode("group", options.get("name", ""), group_options, where, path,
                      {"layers": children}, {key: options.where_of(key) for key in options},
                      block_call=block_call)]


def with_defaults(options: LocatedDict, defaults) -> LocatedDict:
    """The layer's options over the spec's `defaults` for its type (locations kept)."""
    if not defaults:
        return options
    merged = LocatedDict(defaults, where=options.where)
    merged.key_where.update(defaults.key_where)
    merged.value_where.update(defaults.value_where)
    merged.update(options)
    merged.key_where.update(options.key_where)
    merged.value_where.update(options.value_where)
    return merged


def shared(schema: dict) -> dict:
    """A property's schema with the shared `$defs` entry it refers to merged under its own keys
    (a layer list stays a reference: it is a list of layers, not an option to fill)."""
    name = schema.get("$ref", "").rsplit("/", 1)[-1]
    if not name or name == "layer_list":
        return schema
    return {**spec_schema()["$defs"][name], **{k: v for k, v in schema.items() if k != "$ref"}}


def layer_options(layer_type: str) -> dict:
    """Every option of a layer type, its own first, then the shared ones (name, trainable,
    l2, ...), each with its shared definition merged in."""
    return _layer_options(layer_type, schema_version())


@functools.cache
def _layer_options(layer_type: str, version: int) -> dict:
    known = properties_of(layer_schemas()[layer_type], spec_schema())
    return {key: shared(schema) for key, schema in known.items()}


def fill_schema_defaults(layer_type: str, options: dict, option_where: dict, where: Location):
    properties = layer_options(layer_type)
    for key, schema in properties.items():
        if key not in options and "default" in schema:
            options[key] = copy.deepcopy(schema["default"])
            option_where[key] = where
    for key, schema in properties.items():   # `stride: null` means "the kernel size"
        source = schema.get("x-default-from")
        if source and options.get(key) is None:
            options[key] = copy.deepcopy(options.get(source))
            option_where[key] = option_where.get(source, where)


def child_lists(layer_type: str, located: dict, options: dict, path: str, state: Expansion) -> dict:
    """Expand the options the registry names as layer lists (residual's pre/body/shortcut,
    parallel's branches; read from the located options) into children, and drop them
    from `options`. An option that may also be a word (shortcut: auto) stays when it is one."""
    rule = LAYERS[layer_type]
    key = join_key(path, layer_type)
    inner = state.deeper()
    children = {}
    for part in rule.child_lists:
        if isinstance(located.get(part), list):
            children[part] = expand_list(located[part], f"{key}.{part}", inner)
            options.pop(part)
    if rule.branch_lists:
        for index, branch in enumerate(located[rule.branch_lists]):
            children[f"branch_{index}"] = expand_list(
                branch, f"{key}.{rule.branch_lists}[{index}]", inner)
        options.pop(rule.branch_lists)
    return children


def refuse_arguments_outside_blocks(options, key: str, state: Expansion) -> None:
    if not state.in_block:
        placeholder = find_argument(options, options.where)
        if placeholder:
            fail(f"'{placeholder[0]}' can only be used inside a block", placeholder[1], key)


def deferred_in(data, path=()) -> dict:
    """Path -> Deferred for every value that waits for $in_channels."""
    if isinstance(data, Deferred):
        return {path: data}
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    return {found: value for key, item in items for found, value in deferred_in(item, path + (key,)).items()}


def expand_layer(layer_type, options, where, path, state) -> list[LayerNode]:
    key = join_key(path, layer_type)
    refuse_arguments_outside_blocks(options, key, state)
    if not state.in_block:  # `filters: make_divisible(24 * 1.4, 8)`, `filters: $in_channels * 2`
        options, _ = substitute(options, {}, None, where, None, key)
    merged = with_defaults(options, state.defaults.get(layer_type))
    waiting = deferred_in(merged)
    check(merged, layer_type, key, skip=lambda error_path: any(
        tuple(error_path[:len(waiting_path)]) == waiting_path for waiting_path in waiting))
    count_layer(where, path, state)
    option_where = {k: merged.where_of(k) for k in merged}
    values = plain(merged)
    name = values.pop("name", "")
    fill_schema_defaults(layer_type, values, option_where, where)
    children = child_lists(layer_type, merged, values, path, state)
    for child_key in children:
        option_where.pop(child_key, None)
    return [LayerNode(layer_type, name, values, where, path, children, option_where,
                      deferred=deferred_in(values), type_defaults=plain(state.defaults))]


EXPANDERS = {"repeat": expand_repeat, "use": expand_use}


# ---------------------------------------------------------------- naming

def assign_names(nodes: list[LayerNode]) -> None:
    """Keep user names (which must be unique), give the others TYPE_N in order."""
    taken = {}
    for node in walk(nodes):
        if node.name:
            if node.name in taken:
                first = taken[node.name].where
                fail(f"duplicate layer name '{node.name}' (also used on line {first.line})",
                     node.option_where.get("name", node.where),
                     f"{join_key(node.path, 'use' if node.type == 'group' else node.type)}.name")
            taken[node.name] = node
    counters = {}
    for node in walk(nodes):
        if node.name:
            continue
        base = node.options["block"] if node.type == "group" else node.type
        while True:
            counters[base] = counters.get(base, 0) + 1
            candidate = f"{base}_{counters[base]}"
            if candidate not in taken:
                break
        node.name = candidate
        taken[candidate] = node


# ---------------------------------------------------------------- top level

def check_defaults(defaults: LocatedDict) -> dict:
    for layer_type, options in defaults.items():
        key = f"defaults.{layer_type}"
        check(options, layer_type, key, kind=WithoutRequired)
        if "name" in options:
            fail("a default name would give every layer the same name", options.key_where["name"],
                 f"{key}.name")
    return defaults


def check_blocks(blocks: LocatedDict) -> None:
    """A `$arg` in a block must be one of its declared arguments (checked even for
    blocks that are never used)."""
    for block, definition in blocks.items():
        declared = definition.get("args") or {}
        substitute(definition["layers"], {name: (None, None) for name in declared},
                   block, definition.where_of("layers"), path=f"blocks.{block}.layers")


def parse_spec(text: str, file: str | None = None) -> Spec:
    """Validate and expand a spec given as YAML text; `file` names it in messages."""
    file = str(file) if file else "<spec>"
    document = load_mapping(text, file, "spec")
    check(document, "", "", skip=inside_a_layer)
    blocks = document.get("blocks") or LocatedDict()
    check_blocks(blocks)
    state = Expansion(defaults=check_defaults(document.get("defaults") or LocatedDict()),
                      blocks=blocks)
    layers = expand_list(document["layers"], "layers", state)
    assign_names(layers)
    shape = document.get("input")
    input_shape = (shape["channels"], shape["height"], shape["width"]) if shape else None
    return Spec(name=document["name"], description=document.get("description", ""),
                input=input_shape, layers=layers, file=file, text=text,
                recipe=document.get("recipe"))


def load_spec(path) -> Spec:
    """Read and parse a spec file (a Spec passes through unchanged)."""
    if isinstance(path, Spec):
        return path
    return parse_spec(read_bounded_text(path), str(path))


# ---------------------------------------------------------------- $in_channels, during shape inference

def resolve_deferred(node: LayerNode, block_inputs: dict) -> None:
    """Evaluate the node's expressions over $in_channels into its options, each checked
    against the option's schema like a written value."""
    for path, value in node.deferred.items():
        result = evaluated(value.tree, value.text, value.where, block_inputs)
        container = node.options
        for part in path[:-1]:
            container = container[part]
        container[path[-1]] = result
    for option in {path[0] for path in node.deferred}:
        schema = {"$defs": spec_schema()["$defs"], **layer_options(node.type)[option]}
        problem = next(iter(Strict(schema).iter_errors(node.options[option])), None)
        if problem is not None:
            message = (explain(problem, spec_schema()) or (problem.message,))[0]
            written = next(value for path, value in node.deferred.items() if path[0] == option)
            fail(f"'{written.text}' is {node.options[option]!r} here: {message}", written.where,
                 join_key(join_key(node.path, node.type), option))

