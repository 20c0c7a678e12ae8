"""Layer types that pass values through or reshape them without weights: `flatten`,
`identity`, `dropout`, `spatial_dropout`, `scale` (a constant factor) and `pad`.
"""
from __future__ import annotations

import functools
import math

from cnnspec.layers.geometry import (
    error,
    fmt,
    module_attribute,
    need_image,
    nn,
    one,
    shape_free,
    shape_image_free,
    torch_modules,
)
from cnnspec.layers.registry import Inferred, LayerRule, register_layer
from cnnspec.layers.schema_base import MAX_FACTOR, pixel_sizes


@functools.cache
def modules():
    """This file's nn.Modules, defined on first use so that the shape rules never import torch."""
    from torch import nn

    class Scale(nn.Module):
        """Multiply by a constant (airbench's logit scale 1/9)."""

        def __init__(self, factor: float):
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return x * self.factor

        def extra_repr(self):
            return f"factor={self.factor}"

    return torch_modules(Scale)


def __getattr__(name):  # `from cnnspec.layers.reshape import Scale` defines it
    return module_attribute(modules, name, __name__)


def shape_flatten(node, in_shape, ctx):
    return Inferred((math.prod(in_shape),))


def build_flatten(node, in_shape, ctx):
    return one(node, nn.Flatten())


def build_identity(node, in_shape, ctx):
    return one(node, nn.Identity())


def build_dropout(node, in_shape, ctx):
    return one(node, nn.Dropout(node.options["rate"]))


def build_spatial_dropout(node, in_shape, ctx):
    return one(node, nn.Dropout2d(node.options["rate"]))


def build_scale(node, in_shape, ctx):
    return one(node, modules()["Scale"](float(node.options["factor"])))


def pad_sizes(node):
    padding = node.options["padding"]
    return (padding,) * 4 if isinstance(padding, int) else tuple(padding)  # top, bottom, left, right


def shape_pad(node, in_shape, ctx):
    need_image(node, in_shape)
    top, bottom, left, right = pad_sizes(node)
    if node.options["mode"] == "reflect" and max(top, bottom) >= in_shape[1] or \
            node.options["mode"] == "reflect" and max(left, right) >= in_shape[2]:
        raise error(node, f"{node.name}: reflect padding {max(top, bottom, left, right)} needs an "
                          f"input larger than it, got {fmt(in_shape)}", "padding")
    return Inferred((in_shape[0], in_shape[1] + top + bottom, in_shape[2] + left + right))


PADS = {"zeros": lambda p: nn.ZeroPad2d(p), "reflect": lambda p: nn.ReflectionPad2d(p),
        "replicate": lambda p: nn.ReplicationPad2d(p)}


def build_pad(node, in_shape, ctx):
    top, bottom, left, right = pad_sizes(node)
    return one(node, PADS[node.options["mode"]]((left, right, top, bottom)))


FLATTEN_OPTIONS = {"description": "flattens (C, H, W) into (C*H*W,)", "properties": {}, "x-example": ["flatten"]}

IDENTITY_OPTIONS = {
    "description": "passes its input through unchanged (a placeholder, e.g. in a parallel branch)",
    "properties": {},
    "x-example": ["identity"],
}

DROPPED_FRACTION = {
    "type": "number",
    "minimum": 0,
    "exclusiveMaximum": 1,
    "description": "fraction of values dropped during training",
}

DROPOUT_OPTIONS = {
    "description": "zeroes random values during training (scaled to keep the mean)",
    "properties": {"rate": DROPPED_FRACTION},
    "required": ["rate"],
    "x-shorthand": "rate",
    "x-example": [{"dropout": 0.5}],
}

SPATIAL_DROPOUT_OPTIONS = {
    "description": "zeroes whole random channels during training",
    "properties": {"rate": DROPPED_FRACTION},
    "required": ["rate"],
    "x-shorthand": "rate",
    "x-example": [{"spatial_dropout": 0.2}],
}

SCALE_OPTIONS = {
    "description": "multiplies the input by a constant",
    "properties": {"factor": {"type": "number", "minimum": -MAX_FACTOR, "maximum": MAX_FACTOR,
                              "description": "the constant"}},
    "required": ["factor"],
    "x-shorthand": "factor",
    "x-example": [{"scale": 0.5}],
}

PAD_OPTIONS = {
    "description": "pads the spatial borders",
    "properties": {
        "padding": pixel_sizes("pixels on every side, or [top, bottom, left, right]", minimum=0, count=4),
        "mode": {
            "type": "string",
            "enum": ["zeros", "reflect", "replicate"],
            "description": "what the border holds",
            "default": "zeros",
        },
    },
    "required": ["padding"],
    "x-shorthand": "padding",
    "x-example": [{"pad": {"padding": [1, 2, 0, 1], "mode": "reflect"}}],
}


register_layer("flatten", LayerRule(shape_flatten, build_flatten), schema=FLATTEN_OPTIONS)
register_layer("identity", LayerRule(shape_free, build_identity), schema=IDENTITY_OPTIONS)
register_layer("dropout", LayerRule(shape_free, build_dropout), schema=DROPOUT_OPTIONS)
register_layer("spatial_dropout", LayerRule(shape_image_free, build_spatial_dropout), schema=SPATIAL_DROPOUT_OPTIONS)
register_layer("scale", LayerRule(shape_free, build_scale), schema=SCALE_OPTIONS)
register_layer("pad", LayerRule(shape_pad, build_pad), schema=PAD_OPTIONS)
