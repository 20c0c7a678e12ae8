"""The `residual` layer type: activation(body(pre(x)) + shortcut(x or pre(x))), the shortcut
an identity, a projection (1x1 conv + bn), a strided pool or a layer list of its own.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections import OrderedDict

from cnnspec.layers.activations import ACTIVATIONS, activation_of
from cnnspec.layers.geometry import error, fmt, module_attribute, nn, one, torch_modules
from cnnspec.layers.registry import LAYER_SCHEMAS, LAYERS, Inferred, LayerRule, register_layer


@functools.cache
def modules():
    """This file's nn.Modules, defined on first use so that the shape rules never import torch."""
    from torch import nn

    class Residual(nn.Module):
        """activation(body(pre(x)) + shortcut(x or pre(x)))."""

        def __init__(self, body: nn.Module, shortcut: nn.Module, pre: nn.Module | None = None,
                     shortcut_from_pre: bool = False, activation: nn.Module | None = None):
            super().__init__()
            self.pre = pre if pre is not None else nn.Identity()
            self.body = body
            self.shortcut = shortcut
            self.activation = activation if activation is not None else nn.Identity()
            self.shortcut_from_pre = shortcut_from_pre

        def forward(self, x):
            pre = self.pre(x)
            if self.shortcut is None:  # shortcut: none, a block whose skip an argument switched off
                return self.activation(self.body(pre))
            shortcut = self.shortcut(pre if self.shortcut_from_pre else x)
            return self.activation(self.body(pre) + shortcut)

    return torch_modules(Residual)


def __getattr__(name):  # `from cnnspec.layers.residual import Residual` defines it
    return module_attribute(modules, name, __name__)


def shortcut_kind(node, source, body_out):
    if "shortcut" in node.children:
        return "layers"
    kind = node.options["shortcut"]
    if kind == "auto":
        return "identity" if tuple(source) == tuple(body_out) else "projection"
    return kind


def shortcut_stride(node, source, body_out) -> tuple[int, int]:
    """The stride that takes the shortcut's input to the body's output size."""
    if len(source) != 3 or len(body_out) != 3:
        raise error(node, f"{node.name}: a projection or pool shortcut needs image shapes; "
                          f"the input is {fmt(source)} and the body gives {fmt(body_out)}", "shortcut")
    strides = []
    for size, out in zip(source[1:], body_out[1:]):
        stride = -(-size // out)
        if -(-size // stride) != out:
            raise error(node, f"{node.name}: no stride takes the shortcut's {fmt(source)} to the "
                              f"body's {fmt(body_out)}", "shortcut")
        strides.append(stride)
    return tuple(strides)


def residual_shapes(node, in_shape, ctx):
    pre_out = ctx.infer_list(node.children.get("pre", []), in_shape)
    body_out = ctx.infer_list(node.children["body"], pre_out)
    source = pre_out if node.options["shortcut_from"] == "pre" else in_shape
    return pre_out, body_out, source


def projection_bn(node):
    """The batch norm of a projection shortcut, as a `bn` layer with the spec's `defaults: bn`
    over the bn schema's defaults: the same eps and momentum as every other bn of the spec."""
    options = {key: option["default"] for key, option in LAYER_SCHEMAS["bn"]["properties"].items()
               if "default" in option}
    options.update({key: value for key, value in node.type_defaults.get("bn", {}).items()
                    if key in options})
    return dataclasses.replace(node, type="bn", name=f"{node.name}_shortcut_bn", options=options,
                               path=f"{node.path}.shortcut", children={}, deferred={},
                               option_where={key: node.option_where.get("shortcut") for key in options})


def shape_residual(node, in_shape, ctx):
    _, body_out, source = residual_shapes(node, in_shape, ctx)
    kind = shortcut_kind(node, source, body_out)
    own = Inferred(body_out)
    if kind == "layers":
        short_out = ctx.infer_list(node.children["shortcut"], source)
    elif kind == "none":
        short_out = body_out
    elif kind == "identity":
        short_out = source
    elif kind == "pool":
        stride = shortcut_stride(node, source, body_out)
        short_out = (source[0], *(-(-s // k) for s, k in zip(source[1:], stride)))
    else:  # projection: the schema allows no other kind
        shortcut_stride(node, source, body_out)
        short_out = body_out
        bn = LAYERS["bn"].shape(projection_bn(node), body_out, ctx)
        own.trainable = source[0] * body_out[0] + bn.trainable
        own.non_trainable = bn.non_trainable
        own.macs = math.prod(body_out) * source[0]
        if node.options["shortcut"] == "auto":
            ctx.warn(node, f"{node.name}: shortcut auto adds a projection (1x1 conv + bn, "
                           f"{own.trainable + own.non_trainable:,} params) because the body turns "
                           f"{fmt(source)} into {fmt(body_out)}; write shortcut: projection if "
                           f"that is meant", "shortcut")
    if kind in ("projection", "pool") and "shortcut" not in node.children:
        own.parts = [(f"shortcut ({kind})", short_out, own.trainable + own.non_trainable)]
    if tuple(short_out) != tuple(body_out):
        raise error(node, f"{node.name}: cannot add the shortcut {fmt(short_out)} to the body's "
                          f"output {fmt(body_out)}", "shortcut")
    return own


def build_residual(node, in_shape, ctx):
    pre_out, body_out, source = residual_shapes_recorded(node, in_shape, ctx)
    kind = shortcut_kind(node, source, body_out)
    if kind == "layers":
        shortcut = ctx.build_list(node.children["shortcut"])
    elif kind == "pool":
        stride = shortcut_stride(node, source, body_out)
        shortcut = nn.Identity() if stride == (1, 1) else nn.MaxPool2d(1, stride)
    elif kind == "none":
        shortcut = None
    elif kind == "projection":
        shortcut = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(source[0], body_out[0], 1, stride=shortcut_stride(node, source, body_out), bias=False),
            bn=LAYERS["bn"].build(projection_bn(node), body_out, ctx)[0][1]))
    else:
        shortcut = nn.Identity()
    fn = activation_of(node, ctx)
    return one(node, modules()["Residual"](
        body=ctx.build_list(node.children["body"]), shortcut=shortcut,
        pre=ctx.build_list(node.children["pre"]) if node.children.get("pre") else None,
        shortcut_from_pre=node.options["shortcut_from"] == "pre",
        activation=ACTIVATIONS[fn](node.options)))


def residual_shapes_recorded(node, in_shape, ctx):
    """The shapes the inference pass recorded (no second walk, no duplicate records)."""
    pre = node.children.get("pre", [])
    pre_out = ctx.out_shape(pre[-1]) if pre else in_shape
    body_out = ctx.out_shape(node)
    source = pre_out if node.options["shortcut_from"] == "pre" else in_shape
    return pre_out, body_out, source


RESIDUAL_OPTIONS = {
    "description": "y = activation(body(x) + shortcut(x)); the shortcut is chosen to match body's output shape",
    "properties": {
        "body": {"$ref": "#/$defs/layer_list", "description": "the layers on the main path"},
        "pre": {
            "$ref": "#/$defs/layer_list",
            "description": "layers run before the split (e.g. BN + ReLU of a pre-activation block)",
        },
        "shortcut": {
            "type": ["string", "array"],
            "pattern": "^(auto|identity|projection|pool|none)$",
            "items": {"$ref": "#/$defs/layer"},
            "minItems": 1,
            "default": "auto",
            "x-hint": "auto, identity, projection, pool, none or a layer list",
            "description": "auto (identity when shapes match, else projection), identity, projection "
                           "(1x1 conv + BN), pool, none (no skip: the body alone, e.g. `shortcut: $skip` "
                           "in a block), or a layer list",
        },
        "shortcut_from": {
            "type": "string",
            "enum": ["input", "pre"],
            "description": "where the shortcut starts: the block's input, or the output of pre",
            "default": "input",
        },
        "activation": {
            "$ref": "#/$defs/activation_name",
            "description": "activation applied after the add",
            "default": "identity",
        },
    },
    "required": ["body"],
    "x-example": [
        {"residual": {"body": [{"conv": {"filters": 8, "stride": 2}}, "bn"], "activation": "relu"}},
    ],
}


register_layer("residual", LayerRule(shape_residual, build_residual, child_lists=("pre", "body", "shortcut")), schema=RESIDUAL_OPTIONS)
