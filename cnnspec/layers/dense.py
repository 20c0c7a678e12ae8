"""The `dense` layer type: a fully connected layer on a flat input.
"""
from __future__ import annotations

from cnnspec.layers.activations import with_activation
from cnnspec.layers.conv import ACTIVATION_OPTION, INIT_OPTION, INITS, initialise
from cnnspec.layers.geometry import count, error, fmt, nn
from cnnspec.layers.registry import Inferred, LayerRule, register_layer


def shape_dense(node, in_shape, ctx):
    if len(in_shape) != 1:
        raise error(node, f"{node.name}: input {fmt(in_shape)} is not flat; add a flatten or "
                          f"global_avg_pool layer before this dense layer")
    units = count(node, "units", ctx)
    bias = units if node.options["bias"] else 0
    return Inferred((units,), trainable=in_shape[0] * units + bias, macs=in_shape[0] * units)


def build_dense(node, in_shape, ctx):
    dense = nn.Linear(in_shape[0], count(node, "units", ctx), bias=node.options["bias"])
    initialise(node, dense)
    return with_activation(node, ctx, [(node.name, dense)])


DENSE_OPTIONS = {
    "description": "fully connected layer on a flat input; input size is inferred",
    "properties": {
        "units": {
            "type": ["integer", "string"],
            "minimum": 1,
            "maximum": 1000000,
            "pattern": "^num_classes$",
            "x-hint": "an integer >= 1 or num_classes",
            "description": "output size (or num_classes)",
        },
        "bias": {"type": "boolean", "default": True, "description": "learn an additive bias"},
        "activation": dict(ACTIVATION_OPTION),
        "init": dict(INIT_OPTION, enum=list(INITS)),
    },
    "required": ["units"],
    "x-shorthand": "units",
    "x-example": ["flatten", {"dense": {"units": 8, "activation": "relu"}}],
}


register_layer("dense", LayerRule(shape_dense, build_dense, weighted=True, softmax_option="activation"), schema=DENSE_OPTIONS)
