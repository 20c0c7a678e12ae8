"""Normalization within each sample: `layer_norm` over the channels, `group_norm`.

    - layer_norm: {eps: 1.0e-6}     # ConvNeXt's LayerNorm2d: each position's C values
    - group_norm: 32                # torch's GroupNorm(32, C)

Unlike batch norm neither keeps running statistics: training and evaluation compute the
same thing, and a batch of one image is normalized like any other.
"""
from __future__ import annotations

import functools

from cnnspec.layers.geometry import error, fmt, module_attribute, nn, one, torch_modules
from cnnspec.layers.registry import Inferred, LayerRule, register_layer


@functools.cache
def modules():
    """This file's nn.Modules, defined on first use so that the shape rules never import torch."""
    import torch.nn.functional as F
    from torch import nn

    class LayerNorm2d(nn.LayerNorm):
        """nn.LayerNorm over the channels of an (N, C, H, W) map, each position on its own
        (torchvision's ConvNeXt LayerNorm2d: the same weight and bias, the same result)."""

        def forward(self, x):
            x = x.permute(0, 2, 3, 1)
            x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
            return x.permute(0, 3, 1, 2)

    return torch_modules(LayerNorm2d)


def __getattr__(name):  # `from cnnspec.layers.channel_norm import LayerNorm2d` defines it
    return module_attribute(modules, name, __name__)


def affine_params(node, channels: int) -> int:
    return 2 * channels if node.options["affine"] else 0


def shape_layer_norm(node, in_shape, ctx):
    if len(in_shape) not in (1, 3):
        raise error(node, f"{node.name}: layer norm needs a flat or image input, got {fmt(in_shape)}")
    return Inferred(in_shape, trainable=affine_params(node, in_shape[0]))


def build_layer_norm(node, in_shape, ctx):
    norm = modules()["LayerNorm2d"] if len(in_shape) == 3 else nn.LayerNorm
    return one(node, norm(in_shape[0], eps=node.options["eps"], elementwise_affine=node.options["affine"]))


LAYER_NORM_OPTIONS = {
    "description": "layer normalization over the channels: of each position of an image "
                   "(ConvNeXt's LayerNorm2d) or of a flat vector (nn.LayerNorm); no running statistics",
    "properties": {
        "eps": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5,
                "description": "added to the variance for numerical stability (ConvNeXt: 1.0e-6)"},
        "affine": {"type": "boolean", "default": True, "description": "learn a per-channel scale and shift"},
    },
    "x-example": [{"conv": 8}, {"layer_norm": {"eps": 1e-6}}],
}


def shape_group_norm(node, in_shape, ctx):
    if len(in_shape) != 3:
        raise error(node, f"{node.name}: group norm needs an image input (C, H, W), got {fmt(in_shape)}")
    groups = node.options["groups"]
    if in_shape[0] % groups:
        raise error(node, f"{node.name}: groups {groups} must divide the input channels {in_shape[0]}", "groups")
    if in_shape[0] // groups * in_shape[1] * in_shape[2] == 1:  # torch refuses it even for one image
        raise error(node, f"{node.name}: each of its {groups} groups would hold one value ({in_shape[0]} "
                          f"channels of {in_shape[1]}x{in_shape[2]}), which normalizes to 0; use fewer groups "
                          "or place it where the input is larger", "groups")
    return Inferred(in_shape, trainable=affine_params(node, in_shape[0]))


def build_group_norm(node, in_shape, ctx):
    return one(node, nn.GroupNorm(node.options["groups"], in_shape[0], eps=node.options["eps"],
                                  affine=node.options["affine"]))


GROUP_NORM_OPTIONS = {
    "description": "group normalization: the channels in `groups` groups, each group of each "
                   "image normalized over its channels and positions (torch's GroupNorm)",
    "properties": {
        "groups": {"type": "integer", "minimum": 1, "description": "number of channel groups"},
        "eps": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5,
                "description": "added to the variance for numerical stability"},
        "affine": {"type": "boolean", "default": True, "description": "learn a per-channel scale and shift"},
    },
    "required": ["groups"],
    "x-shorthand": "groups",
    "x-example": [{"conv": 8}, {"group_norm": 4}],
}


register_layer("layer_norm", LayerRule(shape_layer_norm, build_layer_norm, weighted=True), schema=LAYER_NORM_OPTIONS)
register_layer("group_norm", LayerRule(shape_group_norm, build_group_norm, weighted=True), schema=GROUP_NORM_OPTIONS)
