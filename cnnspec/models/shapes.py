"""Shape inference for a whole spec, without importing torch.

    ctx = infer(spec, (3, 32, 32), num_classes=10)   # ctx.records: one Record per layer

Every layer's shape rule (layers.py) runs in spec order, a parent before its children,
so every shape error is raised before anything is built. `cnnspec validate` and
`cnnspec summary` run only this; `build_model` (compiler.py) runs it first and builds
from its records.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cnnspec.layers.geometry import error, fmt
from cnnspec.layers.registry import Inferred, rule_for
from cnnspec.spec.expressions import THIS_LAYER
from cnnspec.spec.nodes import LayerNode, Spec

DEFAULT_INPUT = (3, 32, 32)
MAX_PARAMS = 1_000_000_000  # 4 GB of float32 weights: refused before anything is allocated
# What one image's forward pass may keep for the backward pass (every layer's float32
# output) before cnnspec warns, and `validate --strict` refuses: ResNet-50 at 224x224 keeps
# about 0.1 GiB, so a spec above this is almost surely a mistake (a huge input or resize).
MAX_ACTIVATION_BYTES = 1 << 30


@dataclass
class Record:
    """One layer of an inferred spec, in order (a parent before its children)."""

    node: LayerNode
    in_shape: tuple
    out_shape: tuple
    depth: int
    trainable: int = 0  # the layer's own parameters (children have their own records)
    non_trainable: int = 0
    macs: int = 0
    children: list = field(default_factory=list)
    parts: list = field(default_factory=list)  # Inferred.parts: e.g. an automatic shortcut


@dataclass
class Context:
    """What the shape rules share while walking a tree; what the compiler reads after."""

    num_classes: int = 10
    records: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # SpecErrors the spec is valid despite
    _depth: int = -1
    _frozen: int = 0
    _in_shapes: dict = field(default_factory=dict)
    _out_shapes: dict = field(default_factory=dict)
    _backbones: dict = field(default_factory=dict)  # model name -> features on the meta device
    _block_inputs: dict = field(default_factory=dict)  # block call -> its input channels ($in_channels)

    def infer_list(self, nodes: list[LayerNode], in_shape: tuple) -> tuple:
        """Run every node's shape rule in order; return the last output shape."""
        shape = in_shape
        for node in nodes:
            shape = self.infer(node, shape).out_shape
        return shape

    def infer(self, node: LayerNode, in_shape: tuple) -> Record:
        rule = rule_for(node)
        if node.block_call is not None:
            self._block_inputs[node.block_call] = in_shape[0]
        if node.deferred:
            from cnnspec.spec.reader import resolve_deferred

            self._block_inputs[THIS_LAYER] = in_shape[0]
            resolve_deferred(node, self._block_inputs)
        frozen = not node.options["trainable"]
        record = Record(node, in_shape, in_shape, self._depth + 1)
        self.records.append(record)
        first_child = len(self.records)
        self._depth += 1
        self._frozen += frozen
        try:
            inferred = rule.shape(node, in_shape, self)
        finally:
            self._depth -= 1
            self._frozen -= frozen
        if not isinstance(inferred, Inferred):  # a plugin's rule that forgot its return
            raise error(node, f"{node.type} {node.name!r}: its shape rule returned {type(inferred).__name__}, "
                              f"not Inferred(out_shape, ...) (docs/spec.md, your own layer types)")
        record.out_shape = tuple(inferred.out_shape)
        record.trainable, record.non_trainable = inferred.trainable, inferred.non_trainable
        if self._frozen or frozen:
            record.trainable, record.non_trainable = 0, inferred.trainable + inferred.non_trainable
        record.macs = inferred.macs
        record.parts = inferred.parts
        record.children = [r for r in self.records[first_child:] if r.depth == record.depth + 1]
        self._in_shapes[id(node)] = in_shape
        self._out_shapes[id(node)] = record.out_shape
        return record

    def warn(self, node: LayerNode, message: str, option: str | None = None) -> None:
        """A likely mistake that still gives a working model: `cnnspec validate` and `summary`
        print it; `--strict` makes it an error."""
        warning = error(node, message, option)
        if str(warning) not in {str(seen) for seen in self.warnings}:
            self.warnings.append(warning)

    def in_shape(self, node: LayerNode) -> tuple:
        return self._in_shapes[id(node)]

    def out_shape(self, node: LayerNode) -> tuple:
        return self._out_shapes[id(node)]


def infer_tree(nodes: list[LayerNode], in_shape: tuple, num_classes: int = 10) -> Context:
    """Infer every layer's shape and costs; the records are in `ctx.records`."""
    ctx = Context(num_classes=num_classes)
    ctx.infer_list(nodes, tuple(in_shape))
    return ctx


def as_spec(spec_or_path) -> Spec:
    if isinstance(spec_or_path, Spec):
        return spec_or_path
    from cnnspec.spec.reader import load_spec

    return load_spec(Path(spec_or_path))


def whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or (
        hasattr(value, "__index__") and not isinstance(value, (bool, float)))


def resolve_input(spec: Spec, input_shape) -> tuple:
    """The given input shape, else the spec's own `input`, else 3x32x32. A given shape
    must be three whole numbers >= 1 (channels, height, width): ValueError otherwise."""
    if input_shape is None:
        return tuple(spec.input) if spec.input else DEFAULT_INPUT
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__") or len(input_shape) != 3 \
            or not all(whole_number(size) and size >= 1 for size in input_shape):
        raise ValueError(f"input_shape must be (channels, height, width), whole numbers >= 1, not {input_shape!r}")
    return tuple(int(size) for size in input_shape)


# Inference resolves `$in_channels` values into the parsed spec's own nodes (and build_model's
# builders read them there): two walks of one spec at once, from threads, must not interleave.
ONE_SPEC_WALK_AT_A_TIME = threading.RLock()


def infer(spec: Spec, input_shape, num_classes: int) -> Context:
    """The context after walking the whole tree; the model must end in one logit per class."""
    with ONE_SPEC_WALK_AT_A_TIME:
        return _infer(spec, input_shape, num_classes)


def _infer(spec: Spec, input_shape, num_classes: int) -> Context:
    if not whole_number(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be a whole number >= 1, not {num_classes!r}")
    shape = resolve_input(spec, input_shape)
    ctx = infer_tree(spec.layers, shape, num_classes)
    check_param_limit(ctx.records)
    check_activation_memory(ctx)
    check_softmax_is_last(spec.layers, ctx)
    out_shape = ctx.records[-1].out_shape if ctx.records else shape
    if tuple(out_shape) != (num_classes,):
        last = spec.layers[-1]
        raise error(last, f"{last.name}: the model ends in shape {fmt(out_shape)}; it must end in "
                          f"({num_classes},), one logit per class ({ending_fix(spec.layers, ctx.records)})")
    return ctx


def ending_fix(layers: list[LayerNode], records: list[Record]) -> str:
    """What makes a model end in its logits: the units of its last dense when only layers
    that keep the shape (a Keras-style softmax, dropout) follow it, else a dense to end with."""
    out_shape = {id(record.node): tuple(record.out_shape) for record in records}
    final = out_shape[id(layers[-1])]
    if len(final) > 1:
        return "end with flatten (or global_avg_pool), then dense: num_classes"
    for layer in reversed(layers):
        if out_shape[id(layer)] != final:
            break
        if layer.type == "dense":
            return "write units: num_classes" + ("" if layer is layers[-1] else f" in {layer.name}")
    return "end with dense: num_classes"


def top_level(nodes: list[LayerNode]) -> list[LayerNode]:
    """The model's main path: its layers in order, blocks' layers in their place."""
    return [inner for node in nodes
            for inner in (top_level(node.children["layers"]) if node.type == "group" else [node])]


def check_softmax_is_last(nodes: list[LayerNode], ctx: Context) -> None:
    """Warn about a softmax on the main path that other layers follow: only the last
    layer's softmax is folded into the loss, so the loss would take probabilities for
    logits (and predict apply a second softmax)."""
    path = top_level(nodes)
    for index, node in enumerate(path[:-1]):
        option = rule_for(node).softmax_option
        if option and node.options.get(option) == "softmax":
            after = ", ".join(later.name for later in path[index + 1:][:3]) + (", ..." if len(path) > index + 4 else "")
            ctx.warn(node, f"{node.name}: a softmax before the end ({after} after it): the loss and predict "
                           f"apply softmax to what the model ends in; make this the last layer (its softmax is "
                           f"then folded into the loss) or leave the softmax out", option)


def check_param_limit(records) -> None:
    """Refuse a model whose parameters would not fit any sane memory, naming its biggest layer."""
    total = sum(record.trainable + record.non_trainable for record in records)
    if total > MAX_PARAMS:
        biggest = max(records, key=lambda record: record.trainable + record.non_trainable)
        own = biggest.trainable + biggest.non_trainable
        raise error(biggest.node, f"the model would have {total:,} parameters, more than the "
                                  f"limit of {MAX_PARAMS:,}; {biggest.node.name} alone has {own:,}")


def activation_bytes(records) -> int:
    """float32 bytes every layer's output takes for one image (the layers that hold
    others count through their children), what training keeps for the backward pass."""
    return 4 * sum(math.prod(record.out_shape) for record in records if not record.children)


def check_activation_memory(ctx: Context) -> None:
    """Warn (an error under --strict) when one image's activations pass MAX_ACTIVATION_BYTES,
    naming the layer with the largest output."""
    total = activation_bytes(ctx.records)
    if total > MAX_ACTIVATION_BYTES:
        leaves = [record for record in ctx.records if not record.children]
        biggest = max(leaves, key=lambda record: math.prod(record.out_shape))
        ctx.warn(biggest.node, f"one image's forward pass keeps about {gib(total)} of activations "
                               f"(more than {gib(MAX_ACTIVATION_BYTES)}): {biggest.node.name} alone "
                               f"outputs {fmt(biggest.out_shape)}, {gib(4 * math.prod(biggest.out_shape))}; "
                               f"a smaller input, resize or an earlier stride fixes it")


def gib(size: int) -> str:
    return f"{size / (1 << 30):,.1f} GiB"


def infer_shapes(spec_or_path, input_shape=None, num_classes: int = 10) -> list:
    """[(node, in_shape, out_shape)] for every layer, parents before children.
    Raises SpecError at the first layer that cannot work."""
    ctx = infer(as_spec(spec_or_path), input_shape, num_classes)
    return [(record.node, record.in_shape, record.out_shape) for record in ctx.records]
