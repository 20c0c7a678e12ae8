"""A layer type from user code: space-to-depth (TResNet's stem, YOLOv2's passthrough).

    cnnspec validate --plugin examples/space_to_depth.py my_spec.yaml
    # params.yaml:  model: {spec: my_spec.yaml, plugins: [examples/space_to_depth.py]}

then `- space_to_depth: 2` is a layer like any other (docs/spec.md, "Custom layer types"):
each 2x2 block of pixels becomes 4 channels, (C, H, W) -> (4C, H/2, W/2).
"""
from torch import nn

import cnnspec
from cnnspec.layers import error, fmt, one


class SpaceToDepth(nn.Module):
    def __init__(self, block: int):
        super().__init__()
        self.block = block

    def forward(self, x):
        return nn.functional.pixel_unshuffle(x, self.block)


def shape(node, in_shape, ctx):
    """Shapes without torch: the output shape, own parameters, multiply-accumulates."""
    block = node.options["block"]
    if len(in_shape) != 3 or in_shape[1] % block or in_shape[2] % block:
        raise error(node, f"{node.name}: needs an image whose height and width divide by {block}, "
                          f"got {fmt(in_shape)}", "block")
    channels, height, width = in_shape
    return cnnspec.Inferred((channels * block * block, height // block, width // block))


def build(node, in_shape, ctx):
    return one(node, SpaceToDepth(node.options["block"]))


cnnspec.register_layer("space_to_depth", cnnspec.LayerRule(shape, build), schema={
    "description": "moves each block x block square of pixels into channels (pixel unshuffle)",
    "properties": {"block": {"type": "integer", "minimum": 1, "default": 2,
                             "description": "side of the square of pixels that becomes channels"}},
    "x-shorthand": "block",
    "x-example": [{"conv": 4}, {"space_to_depth": 2}],
})
