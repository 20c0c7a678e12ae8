"""Pooling to a fixed output size, whatever the input size (VGG's 7x7, AlexNet's 6x6):
`adaptive_avg_pool`, `adaptive_max_pool`.

    - adaptive_avg_pool: 7           # torch's AdaptiveAvgPool2d(7): (C, H, W) -> (C, 7, 7)
    - adaptive_max_pool: [3, 3]

Each output cell pools the window floor(i * H / h) to ceil((i + 1) * H / h), so an input
smaller than the output repeats its pixels (a 1x1 map becomes 7x7 copies of it), exactly as
torchvision's classifiers see it at small input sizes.
"""
from __future__ import annotations

from cnnspec.layers.geometry import error, fmt, nn, one, pair
from cnnspec.layers.registry import Inferred, LayerRule, register_layer
from cnnspec.layers.schema_base import pixel_sizes


def shape_adaptive_pool(node, in_shape, ctx):
    if len(in_shape) != 3:
        raise error(node, f"{node.name}: needs an image input (C, H, W), got {fmt(in_shape)}")
    return Inferred((in_shape[0], *pair(node.options["size"])))


def build_adaptive_pool(node, in_shape, ctx):
    pool = nn.AdaptiveMaxPool2d if node.type == "adaptive_max_pool" else nn.AdaptiveAvgPool2d
    return one(node, pool(pair(node.options["size"])))


def adaptive_pool_options(kind: str) -> dict:
    return {
        "description": f"{kind} pooling to a fixed output size (torch's Adaptive{kind.title()}Pool2d): "
                       f"(C, H, W) -> (C, size, size) at any input size; for global pooling to a flat "
                       f"vector use global_{kind}_pool",
        "properties": {
            "size": pixel_sizes("output height and width: an int or [h, w]"),
        },
        "required": ["size"],
        "x-shorthand": "size",
        "x-example": [{"conv": 4}, {f"adaptive_{kind}_pool": 7}],
    }


register_layer("adaptive_avg_pool", LayerRule(shape_adaptive_pool, build_adaptive_pool),
               schema=adaptive_pool_options("avg"))
register_layer("adaptive_max_pool", LayerRule(shape_adaptive_pool, build_adaptive_pool),
               schema=adaptive_pool_options("max"))
