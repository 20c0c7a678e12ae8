"""The `group` layer type: what a `use` of a block becomes (the front end makes it; no spec
writes it), its layers built as one nn.Sequential under the block call's name.
"""
from __future__ import annotations

from cnnspec.layers.geometry import one
from cnnspec.layers.registry import Inferred, LayerRule, register_layer


def shape_group(node, in_shape, ctx):
    return Inferred(ctx.infer_list(node.children["layers"], in_shape))


def build_group(node, in_shape, ctx):
    return one(node, ctx.build_list(node.children["layers"]))


register_layer("group", LayerRule(shape_group, build_group, child_lists=("layers",), written=False))
