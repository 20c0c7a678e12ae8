"""The `activation` layer type, and the activations a conv, dense or residual applies
after itself (`activation: relu`), by name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cnnspec.layers.geometry import nn, one, shape_free
from cnnspec.layers.registry import LayerRule, register_layer, registry_drift
from cnnspec.layers.schema_base import MAX_FACTOR

if TYPE_CHECKING:
    from cnnspec.spec.nodes import LayerNode


# Options of the layer that applies the activation: an `activation` layer has alpha and
# negative_slope; a conv, dense or residual with `activation: elu` gets torch's defaults.
ACTIVATIONS = {
    "relu": lambda o: nn.ReLU(),
    "relu6": lambda o: nn.ReLU6(),
    "gelu": lambda o: nn.GELU(),
    "elu": lambda o: nn.ELU(alpha=o.get("alpha", 1.0)),
    "celu": lambda o: nn.CELU(alpha=o.get("alpha", 1.0)),
    "silu": lambda o: nn.SiLU(),
    "mish": lambda o: nn.Mish(),
    "hardswish": lambda o: nn.Hardswish(),
    "hardsigmoid": lambda o: nn.Hardsigmoid(),
    "leaky_relu": lambda o: nn.LeakyReLU(negative_slope=o.get("negative_slope", 0.01)),
    "tanh": lambda o: nn.Tanh(),
    "sigmoid": lambda o: nn.Sigmoid(),
    "softmax": lambda o: nn.Softmax(dim=1),
    "identity": lambda o: nn.Identity(),
}


def activation_of(node: LayerNode, ctx, option: str = "activation") -> str:
    """The activation a layer applies; a final softmax is folded into the loss instead."""
    fn = node.options[option]
    if fn not in ACTIVATIONS:
        raise registry_drift(node, option, ACTIVATIONS)
    return "identity" if node is ctx.softmax_node else fn


def with_activation(node: LayerNode, ctx, pairs: list) -> list:
    fn = activation_of(node, ctx)
    if fn != "identity":
        pairs.append((f"{node.name}_{fn}", ACTIVATIONS[fn](node.options)))
    return pairs


def build_activation(node, in_shape, ctx):
    return one(node, ACTIVATIONS[activation_of(node, ctx, "fn")](node.options))


MIN_ALPHA = 1e-6  # celu divides by alpha

ACTIVATION_OPTIONS = {
    "description": "an element-wise activation function",
    "properties": {
        "fn": {"$ref": "#/$defs/activation_name", "description": "the function"},
        "negative_slope": {
            "type": "number",
            "minimum": -MAX_FACTOR,
            "maximum": MAX_FACTOR,
            "description": "slope for negative inputs (leaky_relu)",
            "default": 0.01,
        },
        "alpha": {
            "type": "number",
            "minimum": MIN_ALPHA,
            "maximum": MAX_FACTOR,
            "description": "alpha of elu and celu",
            "default": 1.0,
        },
    },
    "required": ["fn"],
    "x-shorthand": "fn",
    "x-example": [{"activation": {"fn": "leaky_relu", "negative_slope": 0.2}}],
}


register_layer("activation", LayerRule(shape_free, build_activation, softmax_option="fn"), schema=ACTIVATION_OPTIONS)
