"""What ConvNeXt-style residual bodies end with: a learned per-channel scale, stochastic depth.

    - residual:
        body: [..., layer_scale: 1.0e-6, drop_path: 0.1]

layer_scale multiplies each channel by a learned weight started at `value`; drop_path
(stochastic depth) zeroes the whole body's output for a random `rate` of the samples of a
training batch, so the block passes only its shortcut for them; it is the identity in evaluation.
"""
from __future__ import annotations

from cnnspec.layers import Inferred, LayerRule, LazyModule, error, fmt, one, register_layer

extra = LazyModule("cnnspec.layers.extra_modules")


def scale_shape(in_shape: tuple) -> tuple:
    """torchvision's CNBlock keeps its scale as (C, 1, 1): the same shape, so weights copy over."""
    return (in_shape[0], 1, 1) if len(in_shape) == 3 else (in_shape[0],)


def shape_layer_scale(node, in_shape, ctx):
    if len(in_shape) not in (1, 3):
        raise error(node, f"{node.name}: layer scale needs a flat or image input, got {fmt(in_shape)}")
    return Inferred(in_shape, trainable=in_shape[0])


def build_layer_scale(node, in_shape, ctx):
    return one(node, extra.LayerScale(scale_shape(in_shape), node.options["value"]))


LAYER_SCALE = {
    "description": "multiplies each channel by a learned weight that starts at `value` "
                   "(layer scale: ConvNeXt, CaiT; the end of a residual body)",
    "properties": {
        "value": {"type": "number", "default": 1e-6, "description": "the weights' starting value"},
    },
    "x-shorthand": "value",
    "x-example": [{"conv": 8}, {"layer_scale": 1e-6}],
}


def shape_drop_path(node, in_shape, ctx):
    return Inferred(in_shape)


def build_drop_path(node, in_shape, ctx):
    return one(node, extra.DropPath(float(node.options["rate"])))


DROP_PATH = {
    "description": "stochastic depth: in training, zeroes the input of a random `rate` of the "
                   "samples (the others divided by 1 - rate); identity in evaluation. As the last "
                   "layer of a residual body it drops the whole body for those samples",
    "properties": {
        "rate": {"type": "number", "minimum": 0, "exclusiveMaximum": 1,
                 "description": "the probability of dropping a sample's path"},
    },
    "required": ["rate"],
    "x-shorthand": "rate",
    "x-example": [{"residual": {"body": [{"conv": 3}, {"drop_path": 0.1}]}}],
}

register_layer("layer_scale", LayerRule(shape_layer_scale, build_layer_scale, weighted=True), schema=LAYER_SCALE)
register_layer("drop_path", LayerRule(shape_drop_path, build_drop_path), schema=DROP_PATH)
