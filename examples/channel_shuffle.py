"""A layer type from user code: ShuffleNet's channel shuffle.

    cnnspec validate --plugin examples/channel_shuffle.py my_spec.yaml
    # params.yaml:  model: {spec: my_spec.yaml, plugins: [examples/channel_shuffle.py]}

then `- channel_shuffle: 4` is a layer like any other (docs/spec.md, "Custom layer types").
"""
from torch import nn

import cnnspec
from cnnspec.layers import error, fmt, one


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def shape(node, in_shape, ctx):
    """Shapes without torch: the output shape, own parameters, multiply-accumulates."""
    groups = node.options["groups"]
    if len(in_shape) != 3 or in_shape[0] % groups:
        raise error(node, f"{node.name}: needs an image whose channels divide by {groups}, "
                          f"got {fmt(in_shape)}", "groups")
    return cnnspec.Inferred(in_shape)


def build(node, in_shape, ctx):
    return one(node, ChannelShuffle(node.options["groups"]))


cnnspec.register_layer("channel_shuffle", cnnspec.LayerRule(shape, build), schema={
    "description": "interleaves the channels of `groups` groups (ShuffleNet)",
    "properties": {"groups": {"type": "integer", "minimum": 1, "default": 2,
                              "description": "number of channel groups"}},
    "x-shorthand": "groups",
    "x-example": [{"conv": 4}, {"channel_shuffle": 2}],
})
