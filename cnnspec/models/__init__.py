"""The models part: what a checked spec becomes. It owns shape inference (shapes), the
summary table (summary), build_model (compiler) and reading and writing checkpoints
(checkpoint; every torch file handed over is loaded through the base's torch_files).

It may import the base modules, layers and spec; shapes and summary never import torch
unless the spec holds a backbone.
"""
