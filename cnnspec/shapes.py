"""Shape inference for a whole spec, without importing torch.

`cnnspec validate` and `cnnspec summary` run only this; `build_model` runs it
first, so every shape error is raised before anything is built.
"""
from __future__ import annotations

from pathlib import Path

from cnnspec import layers as registry
from cnnspec.nodes import Spec

DEFAULT_INPUT = (3, 32, 32)
MAX_PARAMS = 1_000_000_000  # 4 GB of float32 weights: refused before anything is allocated


def as_spec(spec_or_path) -> Spec:
    if isinstance(spec_or_path, Spec):
        return spec_or_path
    from cnnspec.spec import load_spec

    return load_spec(Path(spec_or_path))


def resolve_input(spec: Spec, input_shape) -> tuple:
    """The given input shape, else the spec's own `input`, else 3x32x32."""
    if input_shape is not None:
        return tuple(int(size) for size in input_shape)
    return tuple(spec.input) if spec.input else DEFAULT_INPUT


def infer(spec: Spec, input_shape, num_classes: int, load_weights: bool = False):
    """The registry's context after walking the whole tree; the model must end in
    one logit per class."""
    shape = resolve_input(spec, input_shape)
    ctx = registry.infer_tree(spec.layers, shape, num_classes, load_weights)
    check_size(ctx.records)
    out_shape = ctx.records[-1].out_shape if ctx.records else shape
    if tuple(out_shape) != (num_classes,):
        last = spec.layers[-1]
        raise registry.error(last, f"{last.name}: the model ends in shape {registry.fmt(out_shape)}; "
                                   f"it must end in ({num_classes},), one logit per class "
                                   f"(write units: num_classes)")
    return ctx


def check_size(records) -> None:
    """Refuse a model whose parameters would not fit any sane memory, naming its biggest layer."""
    total = sum(record.trainable + record.non_trainable for record in records)
    if total > MAX_PARAMS:
        biggest = max(records, key=lambda record: record.trainable + record.non_trainable)
        own = biggest.trainable + biggest.non_trainable
        raise registry.error(biggest.node, f"the model would have {total:,} parameters, more than the "
                                           f"limit of {MAX_PARAMS:,}; {biggest.node.name} alone has {own:,}")


def infer_shapes(spec_or_path, input_shape=None, num_classes: int = 10) -> list:
    """[(node, in_shape, out_shape)] for every layer, parents before children.
    Raises SpecError at the first layer that cannot work."""
    ctx = infer(as_spec(spec_or_path), input_shape, num_classes)
    return [(record.node, record.in_shape, record.out_shape) for record in ctx.records]
