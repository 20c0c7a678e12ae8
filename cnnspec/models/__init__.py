"""The models part: what a checked spec becomes. It owns shape inference (shapes), the
summary table (summary), build_model (compiler), reading and writing checkpoints
(checkpoint) and loading any torch file handed over without trusting it (torch_files).

It may import the base modules, layers and spec; shapes and summary never import torch
unless the spec holds a backbone.
"""
