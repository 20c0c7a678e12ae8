"""Selecting and shuffling channels (ShuffleNet v2): `channel_split`, `channel_shuffle`.

    - parallel:                           # ShuffleNet v2's unit at stride 1
        branches:
          - [channel_split: {parts: 2, index: 0}]
          - [channel_split: {parts: 2, index: 1}, ...]
    - channel_shuffle: 2
"""
from __future__ import annotations

import functools

from cnnspec.layers.geometry import error, fmt, module_attribute, one, torch_modules
from cnnspec.layers.registry import Inferred, LayerRule, register_layer


@functools.cache
def modules():
    """This file's nn.Modules, defined on first use so that the shape rules never import torch."""
    from torch import nn

    class ChannelSplit(nn.Module):
        """The `index`-th of `parts` equal groups of channels (ShuffleNet's x.chunk(2, dim=1))."""

        def __init__(self, parts: int, index: int):
            super().__init__()
            self.parts, self.index = parts, index

        def forward(self, x):
            return x.chunk(self.parts, dim=1)[self.index]

        def extra_repr(self):
            return f"part {self.index} of {self.parts}"

    class ChannelShuffle(nn.Module):
        """Interleave the channels of `groups` groups (ShuffleNet's channel_shuffle)."""

        def __init__(self, groups: int):
            super().__init__()
            self.groups = groups

        def forward(self, x):
            n, c, h, w = x.shape
            return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)

        def extra_repr(self):
            return f"groups={self.groups}"

    return torch_modules(ChannelSplit, ChannelShuffle)


def __getattr__(name):  # `from cnnspec.layers.channels import ChannelShuffle` defines it
    return module_attribute(modules, name, __name__)


def need_channels_divisible(node, in_shape, by: int, option: str, what: str):
    if len(in_shape) != 3 or in_shape[0] % by:
        raise error(node, f"{node.name}: needs an image whose channels divide into {by} {what}, "
                          f"got {fmt(in_shape)}", option)


def shape_channel_split(node, in_shape, ctx):
    parts, index = node.options["parts"], node.options["index"]
    if index >= parts:
        raise error(node, f"{node.name}: index {index} is not one of the {parts} parts (0 to {parts - 1})", "index")
    need_channels_divisible(node, in_shape, parts, "parts", "equal parts")
    return Inferred((in_shape[0] // parts, *in_shape[1:]))


def build_channel_split(node, in_shape, ctx):
    return one(node, modules()["ChannelSplit"](node.options["parts"], node.options["index"]))


CHANNEL_SPLIT_OPTIONS = {
    "description": "the channels in `parts` equal groups, keeping group `index` (counted from 0): "
                   "ShuffleNet v2's x.chunk(2, dim=1)[index]; a parallel of splits takes a map apart",
    "properties": {
        "index": {"type": "integer", "minimum": 0, "description": "which group to keep, from 0"},
        "parts": {"type": "integer", "minimum": 1, "default": 2,
                  "description": "how many equal groups the channels form"},
    },
    "required": ["index"],
    "x-shorthand": "index",
    "x-example": [{"conv": 8}, {"channel_split": {"parts": 2, "index": 1}}],
}


def shape_channel_shuffle(node, in_shape, ctx):
    need_channels_divisible(node, in_shape, node.options["groups"], "groups", "groups")
    return Inferred(in_shape)


def build_channel_shuffle(node, in_shape, ctx):
    return one(node, modules()["ChannelShuffle"](node.options["groups"]))


CHANNEL_SHUFFLE_OPTIONS = {
    "description": "interleaves the channels of `groups` groups (ShuffleNet's channel shuffle: "
                   "channel g * (C / groups) + i goes to i * groups + g)",
    "properties": {
        "groups": {"type": "integer", "minimum": 1, "default": 2, "description": "number of channel groups"},
    },
    "x-shorthand": "groups",
    "x-example": [{"conv": 8}, {"channel_shuffle": 2}],
}


register_layer("channel_split", LayerRule(shape_channel_split, build_channel_split), schema=CHANNEL_SPLIT_OPTIONS)
register_layer("channel_shuffle", LayerRule(shape_channel_shuffle, build_channel_shuffle),
               schema=CHANNEL_SHUFFLE_OPTIONS)
