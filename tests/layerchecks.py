"""Checks shared by the registry's tests and the plugin tests: a model around a layer
type's schema example, the module a layer built, and Keras-style parameter counts."""
from __future__ import annotations

import json

from cnnspec.spec.reader import layer_schemas

INPUT = (3, 32, 32)

BLOCK_SPEC = """
name: group
blocks:
  conv_bn:
    args: {width: 4}
    layers: [{conv: $width}, bn]
layers:
  - use: {block: conv_bn, width: 6}
  - global_avg_pool
  - dense: num_classes
"""


def spec_for(layer_type: str) -> str:
    """A model around the schema's example of the type: example, flatten if needed, logits."""
    if layer_type == "group":  # what a `use` of a block becomes
        return BLOCK_SPEC
    example = layer_schemas()[layer_type]["x-example"]  # plugin types too (test_language.py)
    spec = {"name": layer_type, "input": dict(zip(("channels", "height", "width"), INPUT)),
            "layers": [*example, "flatten", {"dense": "num_classes"}]}
    return json.dumps(spec)  # JSON is YAML


def module_of(model, name: str):
    """The module a layer named `name` built under that name, wherever it is nested."""
    found = [module for path, module in model.named_modules() if path.rsplit(".", 1)[-1] == name]
    assert len(found) == 1, f"{name}: {len(found)} modules of that name"
    return found[0]


def model_counts(model) -> tuple[int, int]:
    """(trainable, non-trainable) the Keras way: frozen weights and BN statistics are non-trainable."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    statistics = sum(b.numel() for name, b in model.named_buffers()
                     if name.endswith(("running_mean", "running_var")))
    return trainable, frozen + statistics
