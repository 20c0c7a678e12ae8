"""The layer registry: for every layer type of the spec language, one LayerRule and the
JSON Schema of its options, and the whole spec schema assembled from them.

    LAYERS["conv"].shape(node, in_shape, ctx) -> Inferred(out_shape, trainable, non_trainable, macs)
    LAYERS["conv"].build(node, in_shape, ctx) -> [(module_name, nn.Module), ...]

A rule also carries the facts the rest of cnnspec asks about a type (does it take
l2 / lr_mult / wd_mult, which options hold child layer lists, which option may end
the model in a softmax). Every type, built-in or from user code, is added by the same call:

    register_layer("scale", LayerRule(shape_free, build_scale), schema=SCALE_OPTIONS)

where the schema is a fragment {"description", "properties", "required", "x-shorthand",
"x-example"}; the registry adds the options every layer shares (name, trainable; l2,
lr_mult, wd_mult if the rule is weighted) and refuses unknown keys.

Shape rules count a layer's own parameters and multiply-accumulates analytically, so
`cnnspec summary` never imports torch unless the spec holds a backbone. Options arrive
complete: the spec reader has filled in every default the schema declares. A builder
returns the layer's modules as (name, module) pairs, nearly always one pair named after
the layer, so state_dict keys read `layers.conv_1.weight` (a conv with an activation adds a
sibling `conv_1_relu`; an asymmetric "same" padding adds `conv_1_pad`). Shape rules get the
inference context of models/shapes.py (`ctx.infer_list`, `ctx.num_classes`, `ctx.warn`);
builders get the compiler's (`ctx.build_list`, `ctx.out_shape`, `ctx.num_classes`).

This module imports nothing of cnnspec but its errors: the spec reader imports it.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import jsonschema

from cnnspec.layers.schema_base import SHARED_DEFS, TOP_LEVEL

if TYPE_CHECKING:
    from cnnspec.spec.nodes import LayerNode


@dataclass
class Inferred:
    """What a shape rule returns: the output shape and the layer's own costs."""

    out_shape: tuple
    trainable: int = 0
    non_trainable: int = 0
    macs: int = 0
    parts: list = field(default_factory=list)  # (label, shape, params) of modules with no layer of their own


@dataclass(frozen=True)
class LayerRule:
    """Everything cnnspec knows about one layer type besides its schema entry."""

    shape: Callable[..., Inferred]  # (node, in_shape, ctx) -> Inferred
    build: Callable[..., list]      # (node, in_shape, ctx) -> [(name, nn.Module), ...]
    weighted: bool = False          # takes l2 / lr_mult / wd_mult (schema: allOf weighted_options)
    child_lists: tuple = ()         # options holding a layer list: expanded into node.children[key]
    branch_lists: str | None = None  # the option holding a list of layer lists: children branch_0, ...
    softmax_option: str | None = None  # the option whose softmax, on the model's last layer, the loss takes over
    written: bool = True            # False for a type only the front end makes (group: an expanded `use`)


LAYERS: dict[str, LayerRule] = {}
LAYER_SCHEMAS: dict[str, dict] = {}  # layer type -> its $defs entry in the spec schema
BUILT_IN_TYPES: set[str] = set()     # registered by cnnspec.layers itself: never replaced

SCHEMA_KEYS = {"description", "properties", "required", "x-shorthand", "x-example"}
TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_registering_built_ins = [False]


@contextmanager
def registering_built_ins():
    """While cnnspec.layers registers its own types: their schema entries are not checked
    against the JSON Schema meta-schema one by one (30 checks, 45 ms of every start);
    the test suite checks them all. A plugin's entry is always checked."""
    _registering_built_ins[0] = True
    try:
        yield
    finally:
        _registering_built_ins[0] = False


def register_layer(layer_type: str, rule: LayerRule, schema: dict | None = None,
                   replace: bool = False) -> LayerRule:
    """Add a layer type. `schema` describes its options (docs/spec.md, "Adding a layer type");
    a type without one (group) is made by the spec reader, never written in a spec.
    Raises ValueError for a name taken (unless `replace`, for a notebook cell run again;
    a built-in type is never replaced) or a schema fragment that cannot be one."""
    if layer_type in LAYERS:
        if not replace or layer_type in BUILT_IN_TYPES:
            raise ValueError(f"layer type {layer_type!r} is already registered"
                             + ("" if layer_type in BUILT_IN_TYPES else " (replace=True registers it again)"))
        unregister_layer(layer_type)
    if _registering_built_ins[0]:
        BUILT_IN_TYPES.add(layer_type)
    if schema is not None:
        LAYER_SCHEMAS[layer_type] = layer_schema_entry(layer_type, schema, rule)
        schema_changed()
    LAYERS[layer_type] = rule
    return rule


def unregister_layer(layer_type: str) -> None:
    """Remove a type a plugin registered (a built-in one stays)."""
    if layer_type in BUILT_IN_TYPES:
        raise ValueError(f"layer type {layer_type!r} is built in")
    LAYERS.pop(layer_type, None)
    if LAYER_SCHEMAS.pop(layer_type, None) is not None:
        schema_changed()


def layer_schema_entry(layer_type: str, fragment: dict, rule: LayerRule) -> dict:
    """The $defs entry of a layer type: its own options plus the shared ones (name,
    trainable; l2, lr_mult, wd_mult if rule.weighted), unknown keys refused."""
    if not TYPE_NAME.match(layer_type) or layer_type in SHARED_DEFS or layer_type in LAYER_SCHEMAS:
        raise ValueError(f"layer type name {layer_type!r} must be new and written in lower case, "
                         f"digits and underscores")
    unknown = set(fragment) - SCHEMA_KEYS
    if unknown:
        raise ValueError(f"schema of {layer_type!r}: unknown keys {sorted(unknown)}; "
                         f"expected some of {sorted(SCHEMA_KEYS)}")
    shared_parts = ["layer_options"] + (["weighted_options"] if rule.weighted else [])
    entry = {"x-layer": True, "description": fragment.get("description", f"{layer_type} (a plugin)"),
             "type": "object", "allOf": [{"$ref": f"#/$defs/{part}"} for part in shared_parts],
             "properties": copy.deepcopy(dict(fragment.get("properties", {}))),
             "unevaluatedProperties": False}
    for key in ("required", "x-shorthand", "x-example"):
        if key in fragment:
            entry[key] = copy.deepcopy(fragment[key])
    shared_options = {key for part in shared_parts for key in SHARED_DEFS[part]["properties"]}
    clash = set(entry["properties"]) & shared_options
    if clash:
        raise ValueError(f"schema of {layer_type!r}: {sorted(clash)} are options every layer has already")
    if not _registering_built_ins[0]:  # their entries are checked by the test suite, not on every start
        jsonschema.Draft202012Validator.check_schema(entry)  # its $refs point at $defs checked in the tests
    return entry


_assembled: dict = {"version": None, "schema": None}
_version = [0]


def schema_changed() -> None:
    """Forget the assembled schema (after a registration, or a test putting the registry back)."""
    _version[0] += 1


def schema_version() -> int:
    """Changes whenever spec_schema() would: what a cache of anything built from it keys on."""
    return _version[0]


def spec_schema() -> dict:
    """The whole spec language's JSON Schema (2020-12): the top level and shared $defs of
    schema_base.py plus one $defs entry per registered layer type. The same object until
    the next registration; read it, never change it."""
    if _assembled["version"] != _version[0]:
        schema = copy.deepcopy(TOP_LEVEL)
        schema["properties"]["defaults"]["propertyNames"]["enum"] = list(LAYER_SCHEMAS)
        schema["$defs"] = {**copy.deepcopy(SHARED_DEFS), **copy.deepcopy(LAYER_SCHEMAS)}
        _assembled.update(version=_version[0], schema=schema)
    return _assembled["schema"]


def rule_for(node: LayerNode) -> LayerRule:
    if node.type not in LAYERS:  # the schema let through a type the registry lacks
        raise RuntimeError(f"cnnspec bug: layer type {node.type!r} ({node.path}) is in the spec schema "
                           f"but not in the layer registry")
    return LAYERS[node.type]


def registry_drift(node: LayerNode, option: str, table: dict) -> RuntimeError:
    value = node.options[option]
    return RuntimeError(f"cnnspec bug: {node.path}.{option}: {value!r} passed the spec schema but has "
                        f"no entry in the registry (known: {', '.join(table)})")
