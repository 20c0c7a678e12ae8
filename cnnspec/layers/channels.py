"""Selecting and shuffling channels (ShuffleNet v2).

    - parallel:                           # ShuffleNet v2's unit at stride 1
        branches:
          - [channel_split: {parts: 2, index: 0}]
          - [channel_split: {parts: 2, index: 1}, ...]
    - channel_shuffle: 2
"""
from __future__ import annotations

from cnnspec.layers import Inferred, LayerRule, LazyModule, error, fmt, one, register_layer

extra = LazyModule("cnnspec.layers.extra_modules")


def need_channels_divisible(node, in_shape, by: int, option: str, what: str):
    if len(in_shape) != 3 or in_shape[0] % by:
        raise error(node, f"{node.name}: needs an image whose channels divide into {by} {what}, "
                          f"got {fmt(in_shape)}", option)


def shape_channel_split(node, in_shape, ctx):
    parts, index = node.options["parts"], node.options["index"]
    if index >= parts:
        raise error(node, f"{node.name}: index {index} is not one of the {parts} parts "
                          f"(0 to {parts - 1})", "index")
    need_channels_divisible(node, in_shape, parts, "parts", "equal parts")
    return Inferred((in_shape[0] // parts, *in_shape[1:]))


def build_channel_split(node, in_shape, ctx):
    return one(node, extra.ChannelSplit(node.options["parts"], node.options["index"]))


CHANNEL_SPLIT = {
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
    return one(node, extra.ChannelShuffle(node.options["groups"]))


CHANNEL_SHUFFLE = {
    "description": "interleaves the channels of `groups` groups (ShuffleNet's channel shuffle: "
                   "channel g * (C / groups) + i goes to i * groups + g)",
    "properties": {
        "groups": {"type": "integer", "minimum": 1, "default": 2, "description": "number of channel groups"},
    },
    "x-shorthand": "groups",
    "x-example": [{"conv": 8}, {"channel_shuffle": 2}],
}

register_layer("channel_split", LayerRule(shape_channel_split, build_channel_split), schema=CHANNEL_SPLIT)
register_layer("channel_shuffle", LayerRule(shape_channel_shuffle, build_channel_shuffle), schema=CHANNEL_SHUFFLE)
