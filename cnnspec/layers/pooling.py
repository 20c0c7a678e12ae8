"""Pooling layer types: `max_pool` and `avg_pool` windows (TensorFlow's "same" ignores the
padded pixels), `global_avg_pool` and `global_max_pool` over H and W or over channels.
"""
from __future__ import annotations

import copy
import functools

from cnnspec.layers.geometry import (
    error,
    module_attribute,
    need_image,
    nn,
    one,
    pair,
    spatial,
    symmetric,
    torch_modules,
    warn_even_symmetric,
)
from cnnspec.layers.registry import Inferred, LayerRule, register_layer
from cnnspec.layers.schema_base import pixel_sizes


@functools.cache
def modules():
    """This file's nn.Modules, defined on first use so that the shape rules never import torch."""
    from torch import nn

    class GlobalPool(nn.Module):
        """Average or max over H and W: (N, C, H, W) -> (N, C), or (N, C, 1, 1) with keep_dims;
        over="channels": over C instead, (N, C, H, W) -> (N, 1, H, W)."""

        def __init__(self, kind: str = "avg", keep_dims: bool = False, over: str = "spatial"):
            super().__init__()
            self.kind, self.over = kind, over
            self.dims, self.keep_dims = ((1,), True) if over == "channels" else ((2, 3), keep_dims)

        def forward(self, x):
            if self.kind == "avg":
                return x.mean(self.dims, keepdim=self.keep_dims)
            return x.amax(self.dims, keepdim=self.keep_dims)

        def extra_repr(self):
            return f"{self.kind}, over={self.over}, keep_dims={self.keep_dims}"

    return torch_modules(GlobalPool)


def __getattr__(name):  # `from cnnspec.layers.pooling import GlobalPool` defines it
    return module_attribute(modules, name, __name__)


def pool_geometry(node, in_shape):
    need_image(node, in_shape)
    o = node.options
    kernel = pair(o["kernel"])
    stride = pair(o["stride"])
    padding = o["padding"]
    if isinstance(padding, (int, list)) and any(2 * p > k for p, k in zip(pair(padding), kernel)):
        raise error(node, f"{node.name}: padding {padding} is more than half the kernel "
                          f"{kernel[0]}x{kernel[1]}", "padding")
    ceil_mode = o["ceil_mode"]
    if ceil_mode and padding == "same":
        raise error(node, f"{node.name}: ceil_mode with padding same: same already keeps every partial "
                          f"window (TensorFlow); ceil_mode is PyTorch's, with valid, symmetric or a number",
                    "ceil_mode")
    (height, width), pads = spatial(node, in_shape, kernel, stride, padding, ceil_mode=ceil_mode)
    return kernel, stride, pads, (in_shape[0], height, width)


def shape_pool(node, in_shape, ctx):
    kernel, _, _, out = pool_geometry(node, in_shape)
    warn_even_symmetric(node, kernel, ctx)
    return Inferred(out)


def build_pool(node, in_shape, ctx):
    kernel, stride, pads, _ = pool_geometry(node, in_shape)
    is_max = node.type == "max_pool"
    pairs = []
    if not symmetric(pads) or (pads[0] * 2 > kernel[0] or pads[2] * 2 > kernel[1]):
        # TensorFlow ignores the padded pixels: -inf for max; zeros (counted) for avg.
        fill = float("-inf") if is_max else 0.0
        pairs.append((f"{node.name}_pad", nn.ConstantPad2d((pads[2], pads[3], pads[0], pads[1]), fill)))
        pads = (0, 0, 0, 0)
    padding = (pads[0], pads[2])
    ceil_mode = node.options["ceil_mode"]
    pool = (nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode) if is_max else
            nn.AvgPool2d(kernel, stride, padding, ceil_mode=ceil_mode,
                         count_include_pad=node.options["padding"] != "same"))
    pairs.append((node.name, pool))
    return pairs


def shape_global_pool(node, in_shape, ctx):
    need_image(node, in_shape)
    if node.options["over"] == "channels":
        return Inferred((1, *in_shape[1:]))
    return Inferred((in_shape[0], 1, 1) if node.options["keep_dims"] else (in_shape[0],))


def build_global_pool(node, in_shape, ctx):
    return one(node, modules()["GlobalPool"]("max" if node.type == "global_max_pool" else "avg",
                                             keep_dims=node.options["keep_dims"], over=node.options["over"]))


WINDOW_POOL_PROPERTIES = {
    "kernel": pixel_sizes("window size: an integer or [h, w]", default=2),
    "stride": pixel_sizes("step between windows (null = the kernel size)", nullable=True, default=None,
                          **{"x-default-from": "kernel"}),
    "padding": {
        "type": ["string", "integer"],
        "pattern": "^(same|valid|symmetric)$",
        "minimum": 0,
        "default": "valid",
        "x-hint": "same, valid, symmetric or an integer >= 0",
        "description": "valid (none), same (keep the size at stride 1, TensorFlow style), symmetric ((kernel - 1) // 2 on every side, PyTorch style) or pixels on each side",
    },
    "ceil_mode": {
        "type": "boolean",
        "default": False,
        "description": "PyTorch's ceil_mode: a last, partial window at the bottom and right counts "
                       "too (SqueezeNet, GoogLeNet); output ceil instead of floor",
    },
}


def window_pool_options(description: str, example: list) -> dict:
    """The options of max_pool and avg_pool, which differ only in what they compute."""
    return {"description": description, "properties": copy.deepcopy(WINDOW_POOL_PROPERTIES),
            "x-shorthand": "kernel", "x-example": example}


MAX_POOL_OPTIONS = window_pool_options("max pooling over each channel's spatial window",
                                       [{"max_pool": {"kernel": 3, "stride": 2, "padding": "same"}}])
AVG_POOL_OPTIONS = window_pool_options("average pooling over each channel's spatial window",
                                       [{"avg_pool": 2}, {"avg_pool": {"kernel": 3, "stride": 2, "ceil_mode": True}}])

GLOBAL_POOL_PROPERTIES = {
    "keep_dims": {
        "type": "boolean",
        "default": False,
        "description": "keep a (C, 1, 1) image instead of the flat (C,): a per-channel gate to multiply into a feature map",
    },
    "over": {
        "type": "string",
        "enum": ["spatial", "channels"],
        "default": "spatial",
        "description": "spatial: pool each channel over H and W; channels: pool each position over the channels, giving (1, H, W) (a spatial attention map, CBAM)",
    },
}

GLOBAL_AVG_POOL_OPTIONS = {
    "description": "average over all spatial positions; output is flat (C,), or (C, 1, 1) with keep_dims",
    "properties": copy.deepcopy(GLOBAL_POOL_PROPERTIES),
    "x-example": ["global_avg_pool"],
}

GLOBAL_MAX_POOL_OPTIONS = {
    "description": "maximum over all spatial positions; output is flat (C,), or (C, 1, 1) with keep_dims",
    "properties": copy.deepcopy(GLOBAL_POOL_PROPERTIES),
    "x-example": [
        {
            "parallel": {
                "merge": "multiply",
                "branches": [
                    [],
                    [
                        {
                            "parallel": {
                                "branches": [
                                    [{"global_avg_pool": {"over": "channels"}}],
                                    [{"global_max_pool": {"over": "channels"}}],
                                ],
                            },
                        },
                        {
                            "conv": {
                                "filters": 1,
                                "kernel": 7,
                                "padding": "symmetric",
                                "activation": "sigmoid",
                            },
                        },
                    ],
                ],
            },
        },
        "global_max_pool",
    ],
}


register_layer("max_pool", LayerRule(shape_pool, build_pool), schema=MAX_POOL_OPTIONS)
register_layer("avg_pool", LayerRule(shape_pool, build_pool), schema=AVG_POOL_OPTIONS)
register_layer("global_avg_pool", LayerRule(shape_global_pool, build_global_pool), schema=GLOBAL_AVG_POOL_OPTIONS)
register_layer("global_max_pool", LayerRule(shape_global_pool, build_global_pool), schema=GLOBAL_MAX_POOL_OPTIONS)
