"""The parsed form of a spec: what the front end (spec.py) hands the compiler.

`load_spec` reads YAML, validates it against the spec schema, fills in defaults,
expands `repeat` and `use` (block calls with their arguments substituted), and
names every layer. What remains is a tree of `LayerNode`s the compiler walks:
no `$argument`, no `repeat`, no `use` left, every option present.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Location:
    """Where something is written: 1-based line and column in `file`."""

    file: str | None
    line: int | None = None
    col: int | None = None
    quoted: bool = False  # a quoted scalar: its text starts at col + 1


@dataclass
class LayerNode:
    """One layer of the expanded spec.

    type: the registry key (conv, bn, dense, residual, parallel, group, ...).
    name: unique in the model; written by the user or generated (`conv_3`).
    options: every option of the layer type, defaults filled in, arguments
        substituted; `name` and the child layer lists are not in it.
    children: child layer lists of composite layers, by option name:
        residual: {"pre": [...], "body": [...], "shortcut": [...]} (each optional but body),
        parallel: {"branch_0": [...], "branch_1": [...], ...},
        group (one expanded `use` of a block): {"layers": [...]}.
    where: where the layer is written (for a layer inside a block, inside the
        block's definition).
    path: the key path for messages, e.g. `layers[3]` or
        `layers[5] (block fire) > layers[1]`.
    option_where: where each option's value is written, for messages that
        point at one key.
    deferred: options whose value is an expression over `$in_channels`, by path
        (`("filters",)`); shape inference evaluates them into `options`.
    """

    type: str
    name: str
    options: dict
    where: Location
    path: str
    children: dict[str, list[LayerNode]] = field(default_factory=dict)
    option_where: dict[str, Location] = field(default_factory=dict)
    deferred: dict = field(default_factory=dict)  # option path -> expressions.Deferred (uses $in_channels)
    block_call: int | None = None  # group: the call whose input channels $in_channels means
    type_defaults: dict = field(default_factory=dict)  # the spec's `defaults`, for modules a layer adds
    # of another type itself (a projection shortcut's batch norm honours `defaults: bn`)


@dataclass
class Spec:
    """A loaded spec: the top-level fields and the expanded layer tree."""

    name: str
    description: str
    input: tuple[int, int, int] | None  # (channels, height, width) when the spec fixes it
    layers: list[LayerNode]
    file: str | None
    text: str  # the YAML source, kept so a checkpoint can rebuild the model
    recipe: str | None = None  # the recipes/NAME.yaml it is meant to train with


def walk(nodes: list[LayerNode]):
    """Every node of a layer tree, a parent before its children, in spec order."""
    for node in nodes:
        yield node
        for children in node.children.values():
            yield from walk(children)
