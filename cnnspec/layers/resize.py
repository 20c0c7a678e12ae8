"""The `resize` layer type: every image to (height, width), in training and evaluation.
"""
from __future__ import annotations

import functools

from cnnspec.layers.geometry import module_attribute, need_image, one, torch_modules
from cnnspec.layers.registry import Inferred, LayerRule, register_layer


@functools.cache
def modules():
    """This file's nn.Modules, defined on first use so that the shape rules never import torch."""
    import torch.nn.functional as F
    from torch import nn

    class Resize(nn.Module):
        """Resize every image to (height, width), in training and evaluation alike."""

        def __init__(self, size: tuple[int, int], mode: str = "bilinear"):
            super().__init__()
            self.size, self.mode = tuple(size), mode

        def forward(self, x):
            if self.mode == "nearest":
                return F.interpolate(x, size=self.size, mode="nearest")
            return F.interpolate(x, size=self.size, mode=self.mode, align_corners=False)

        def extra_repr(self):
            return f"size={self.size}, mode={self.mode}"

    return torch_modules(Resize)


def __getattr__(name):  # `from cnnspec.layers.resize import Resize` defines it
    return module_attribute(modules, name, __name__)


def resize_to(node):
    return node.options["height"], node.options["width"]


def shape_resize(node, in_shape, ctx):
    need_image(node, in_shape)
    return Inferred((in_shape[0], *resize_to(node)))


def build_resize(node, in_shape, ctx):
    return one(node, modules()["Resize"](resize_to(node), node.options["mode"]))


RESIZE_OPTIONS = {
    "description": "resizes every image to a fixed size (training and inference)",
    "properties": {
        "height": {
            "type": "integer",
            "minimum": 1,
            "description": "output height",
            "maximum": 8192,
        },
        "width": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": 8192,
            "default": None,
            "x-default-from": "height",
            "description": "output width (null = height)",
        },
        "mode": {
            "type": "string",
            "enum": ["bilinear", "nearest"],
            "description": "interpolation",
            "default": "bilinear",
        },
    },
    "required": ["height"],
    "x-example": [{"resize": {"height": 8}}],
}


register_layer("resize", LayerRule(shape_resize, build_resize), schema=RESIZE_OPTIONS)
