"""What ConvNeXt-style residual bodies end with: `layer_scale`, a learned per-channel scale,
and `drop_path`, stochastic depth.

    - residual:
        body: [..., layer_scale: 1.0e-6, drop_path: 0.1]

layer_scale multiplies each channel by a learned weight started at `value`; drop_path
zeroes the whole body's output for a random `rate` of the samples of a training batch (the
others divided by 1 - rate), so the block passes only its shortcut for them; it is the
identity in evaluation.
"""
from __future__ import annotations

import functools

from cnnspec.layers.geometry import error, fmt, module_attribute, one, torch_modules
from cnnspec.layers.registry import Inferred, LayerRule, register_layer
from cnnspec.layers.schema_base import MAX_FACTOR


@functools.cache
def modules():
    """This file's nn.Modules, defined on first use so that the shape rules never import torch."""
    import torch
    from torch import nn

    class LayerScale(nn.Module):
        """A learned scale per channel, started at a small value (ConvNeXt, CaiT): the weight
        is (C, 1, 1) on an image, (C,) on a flat input, as torchvision's CNBlock.layer_scale."""

        def __init__(self, shape: tuple, value: float):
            super().__init__()
            self.weight = nn.Parameter(torch.full(shape, float(value)))

        def forward(self, x):
            return x * self.weight

        def extra_repr(self):
            return f"channels={self.weight.shape[0]}"

    class DropPath(nn.Module):
        """Stochastic depth (torchvision's StochasticDepth, mode "row"): in training, each
        sample is zeroed with probability `rate` and the others divided by 1 - rate."""

        def __init__(self, rate: float):
            super().__init__()
            self.rate = rate

        def forward(self, x):
            if not self.training or self.rate == 0.0:
                return x
            keep = 1.0 - self.rate
            mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
            return x * mask.bernoulli_(keep).div_(keep)

        def extra_repr(self):
            return f"rate={self.rate}"

    return torch_modules(LayerScale, DropPath)


def __getattr__(name):  # `from cnnspec.layers.residual_branch import DropPath` defines it
    return module_attribute(modules, name, __name__)


def shape_layer_scale(node, in_shape, ctx):
    if len(in_shape) not in (1, 3):
        raise error(node, f"{node.name}: layer scale needs a flat or image input, got {fmt(in_shape)}")
    return Inferred(in_shape, trainable=in_shape[0])


def build_layer_scale(node, in_shape, ctx):
    shape = (in_shape[0], 1, 1) if len(in_shape) == 3 else (in_shape[0],)  # torchvision's CNBlock shape
    return one(node, modules()["LayerScale"](shape, node.options["value"]))


LAYER_SCALE_OPTIONS = {
    "description": "multiplies each channel by a learned weight that starts at `value` "
                   "(layer scale: ConvNeXt, CaiT; the end of a residual body)",
    "properties": {
        "value": {"type": "number", "minimum": -MAX_FACTOR, "maximum": MAX_FACTOR, "default": 1e-6,
                  "description": "the weights' starting value"},
    },
    "x-shorthand": "value",
    "x-example": [{"conv": 8}, {"layer_scale": 1e-6}],
}


def shape_drop_path(node, in_shape, ctx):
    return Inferred(in_shape)


def build_drop_path(node, in_shape, ctx):
    return one(node, modules()["DropPath"](float(node.options["rate"])))


DROP_PATH_OPTIONS = {
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


register_layer("layer_scale", LayerRule(shape_layer_scale, build_layer_scale, weighted=True),
               schema=LAYER_SCALE_OPTIONS)
register_layer("drop_path", LayerRule(shape_drop_path, build_drop_path), schema=DROP_PATH_OPTIONS)
