"""The `bn` layer type: batch normalization of a flat or image input, PyTorch's momentum
convention (a Keras-looking momentum is warned about).
"""
from __future__ import annotations

from cnnspec.layers.geometry import error, fmt, nn, one
from cnnspec.layers.registry import Inferred, LayerRule, register_layer

KERAS_MOMENTUM = 0.5  # above it, a momentum is most likely Keras' (1 - PyTorch's)


def shape_bn(node, in_shape, ctx):
    if len(in_shape) not in (1, 3):
        raise error(node, f"{node.name}: batch norm needs a flat or image input, got {fmt(in_shape)}")
    momentum = node.options["momentum"]
    if momentum > KERAS_MOMENTUM:
        ctx.warn(node, f"{node.name}: momentum {momentum} is the weight of each new batch here "
                       f"(PyTorch's convention); Keras' momentum {momentum} is "
                       f"{round(1 - momentum, 6)} here", "momentum")
    channels = in_shape[0]
    if not node.options["affine"]:
        return Inferred(in_shape, non_trainable=2 * channels)  # moving mean and variance only
    frozen_weight = not node.options["weight_trainable"]
    return Inferred(in_shape, trainable=channels * (1 if frozen_weight else 2),
                    non_trainable=2 * channels + (channels if frozen_weight else 0))


def build_bn(node, in_shape, ctx):
    norm = nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d
    o = node.options
    bn = norm(in_shape[0], eps=o["eps"], momentum=o["momentum"], affine=o["affine"])
    if bn.affine and not o["weight_trainable"]:
        bn.weight.requires_grad_(False)  # gamma stays at 1 (airbench)
    return one(node, bn)


BN_OPTIONS = {
    "description": "batch normalization (1-d or 2-d by input rank); Keras counts its running mean and variance as non-trainable params",
    "properties": {
        "momentum": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "running-average momentum, PyTorch convention (Keras' 0.99 is 0.01 here)",
            "default": 0.1,
        },
        "eps": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": "added to the variance for numerical stability",
            "default": 1e-05,
        },
        "affine": {
            "type": "boolean",
            "default": True,
            "description": "learn a scale (gamma) and shift (beta)",
        },
        "weight_trainable": {
            "type": "boolean",
            "default": True,
            "description": "false freezes gamma at 1 (beta still trains)",
        },
    },
    "x-example": [{"bn": {"momentum": 0.01}}],
}


register_layer("bn", LayerRule(shape_bn, build_bn, weighted=True), schema=BN_OPTIONS)
