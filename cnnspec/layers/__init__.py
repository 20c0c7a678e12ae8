"""The layers part: the layer registry (registry.py) and every built-in layer type, one
file per family, each holding its types' schema fragments, shape rules, builders and the
nn.Modules they need. Importing this package registers the built-in types, in the order
below (the order of the spec schema's $defs).

It may import only the base modules (cnnspec.errors, cnnspec.fetch, cnnspec.torch_files);
the spec reader and everything above import it. A layer type from user code calls register_layer like these
files do (docs/spec.md, "Adding a layer type").
"""
# The order of these imports is the order of registration: `cnnspec layers`, the schema and
# the registry list the types in it, so isort must leave it alone.
from cnnspec.layers.registry import registering_built_ins  # noqa: I001

with registering_built_ins():
    from cnnspec.layers import (activations, conv, dense, normalization, pooling, reshape,  # noqa: F401, I001
                                augmentation, resize, whiten, residual, parallel, group, backbone,
                                channel_norm, residual_branch, channels, adaptive_pool)
# the names a layer type from user code uses (examples/space_to_depth.py)
from cnnspec.layers.geometry import error, fmt, one  # noqa: F401
from cnnspec.layers.registry import LAYERS, Inferred, LayerRule, register_layer, rule_for  # noqa: F401
