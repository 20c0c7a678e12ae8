"""The `parallel` layer type: branches on the same input, concatenated on channels, added
or multiplied (broadcasting: a Cx1x1 gate scales each channel).
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from cnnspec.layers.geometry import error, fmt, module_attribute, one, torch_modules
from cnnspec.layers.registry import Inferred, LayerRule, register_layer

if TYPE_CHECKING:
    from cnnspec.spec.nodes import LayerNode


@functools.cache
def modules():
    """This file's nn.Modules, defined on first use so that the shape rules never import torch."""
    import torch
    from torch import nn

    class Parallel(nn.Module):
        """Run every branch on the same input; concatenate on channels, add or multiply
        (add and multiply broadcast: a (N, C, 1, 1) gate scales each channel of a feature map)."""

        def __init__(self, branches: list[nn.Module], merge: str = "concat"):
            super().__init__()
            self.branches = nn.ModuleList(branches)
            self.merge = merge

        def forward(self, x):
            outputs = [branch(x) for branch in self.branches]
            if self.merge == "concat":
                return torch.cat(outputs, dim=1)
            merged = outputs[0]
            for output in outputs[1:]:
                merged = merged * output if self.merge == "multiply" else merged + output
            return merged

        def extra_repr(self):
            return f"merge={self.merge}"

    return torch_modules(Parallel)


def __getattr__(name):  # `from cnnspec.layers.parallel import Parallel` defines it
    return module_attribute(modules, name, __name__)


def branches(node) -> list[list[LayerNode]]:
    return [node.children[key] for key in sorted(node.children, key=lambda k: int(k.split("_")[1]))
            if key.startswith("branch_")]


def broadcast(shapes: list[tuple]) -> tuple | None:
    """The shape an elementwise merge of `shapes` gives: same rank, each size equal or 1
    (no implicit new axes: a flat (C,) against (C, H, W) would meet W, not C). None if not."""
    if len({len(shape) for shape in shapes}) > 1:
        return None
    merged = []
    for sizes in zip(*shapes):
        wanted = {size for size in sizes if size != 1} or {1}
        if len(wanted) > 1:
            return None
        merged.append(wanted.pop())
    return tuple(merged)


ELEMENTWISE_MERGES = ("add", "multiply")


def shape_parallel(node, in_shape, ctx):
    outs = [ctx.infer_list(branch, in_shape) for branch in branches(node)]
    if len(outs) < 2:
        raise error(node, f"{node.name}: parallel needs at least 2 branches, got {len(outs)}", "branches")
    merge = node.options["merge"]
    shown = " and ".join(fmt(out) for out in outs)
    if merge in ELEMENTWISE_MERGES:
        merged = broadcast(outs)
        if merged is None:
            hint = "; a global pool with keep_dims: true gives a Cx1x1 gate" \
                if any(len(out) == 1 for out in outs) and any(len(out) == 3 for out in outs) else ""
            raise error(node, f"{node.name}: cannot {merge} branches of shapes {shown}: "
                              f"each size must be equal or 1{hint}", "merge")
        return Inferred(merged)
    if len({(len(out), *out[1:]) for out in outs}) > 1:
        raise error(node, f"{node.name}: cannot concatenate branches of shapes {shown} on channels",
                    "merge")
    return Inferred((sum(out[0] for out in outs), *outs[0][1:]))


def build_parallel(node, in_shape, ctx):
    return one(node, modules()["Parallel"]([ctx.build_list(branch) for branch in branches(node)],
                                           merge=node.options["merge"]))


PARALLEL_OPTIONS = {
    "description": "runs branches on the same input and merges their outputs",
    "properties": {
        "branches": {
            "type": "array",
            "minItems": 2,
            "items": {"$ref": "#/$defs/branch"},
            "description": "two or more layer lists; [] is the input itself (e.g. DenseNet's concatenation with the input)",
        },
        "merge": {
            "type": "string",
            "enum": ["concat", "add", "multiply"],
            "description": "concat (on channels), add, or multiply; add and multiply broadcast a size of 1 (a Cx1x1 gate scales each channel)",
            "default": "concat",
        },
    },
    "required": ["branches"],
    "x-example": [
        {"parallel": {"branches": [[], [{"conv": {"filters": 2, "kernel": 1}}]]}},
        {
            "parallel": {
                "merge": "multiply",
                "branches": [
                    [],
                    [
                        {"global_avg_pool": {"keep_dims": True}},
                        {"conv": {"filters": 2, "kernel": 1, "activation": "relu"}},
                        {"conv": {"filters": 5, "kernel": 1, "activation": "sigmoid"}},
                    ],
                ],
            },
        },
    ],
}


register_layer("parallel", LayerRule(shape_parallel, build_parallel, branch_lists="branches"), schema=PARALLEL_OPTIONS)
