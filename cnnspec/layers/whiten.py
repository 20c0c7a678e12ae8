"""The `whiten` layer type: airbench's whitening conv, 2 * C * k * k frozen filters set from
the training images' patches before training.
"""
from __future__ import annotations

import functools

from cnnspec.layers.geometry import error, fmt, module_attribute, need_image, one, torch_modules
from cnnspec.layers.registry import Inferred, LayerRule, register_layer


@functools.cache
def modules():
    """This file's nn.Modules, defined on first use so that the shape rules never import torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class WhiteningConv(nn.Module):
        """airbench's whitening layer: a conv with 2 * C * k * k frozen filters.

        `init_from_data(images)` sets the filters to the eigenvectors of the covariance of the
        images' k x k patches, each scaled by 1 / sqrt(eigenvalue + eps), followed by their
        negatives (so the covariance is that of the images and their negatives: zero mean).
        The filter responses on those patches are then decorrelated with unit variance.
        """

        def __init__(self, in_channels: int, kernel: int = 2, eps: float = 5e-4, bias: bool = True,
                     bias_epochs: int | None = None):
            super().__init__()
            out_channels = 2 * in_channels * kernel * kernel
            self.kernel, self.eps, self.bias_epochs = kernel, eps, bias_epochs
            self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel, kernel),
                                       requires_grad=False)
            self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

        def frozen_in_epoch(self, epoch: int) -> list[nn.Parameter]:
            """airbench trains the bias for the first `bias_epochs` epochs only."""
            if self.bias is not None and self.bias_epochs is not None and epoch >= self.bias_epochs:
                return [self.bias]
            return []

        def forward(self, x):
            return F.conv2d(x, self.weight, self.bias)

        @torch.no_grad()
        def init_from_data(self, images):
            channels, k = images.shape[1], self.kernel
            patches = images.unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels * k * k).double()
            covariance = patches.T @ patches / len(patches)
            eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending; columns
            eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
            filters = eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + self.eps)[:, None]
            filters = filters.view(-1, channels, k, k).to(self.weight)
            self.weight.copy_(torch.cat([filters, -filters]))

        def extra_repr(self):
            limit = "" if self.bias_epochs is None else f", bias_epochs={self.bias_epochs}"
            return f"in_channels={self.weight.shape[1]}, out_channels={self.weight.shape[0]}, " \
                   f"kernel={self.kernel}, eps={self.eps}{limit}"

    return torch_modules(WhiteningConv)


def __getattr__(name):  # `from cnnspec.layers.whiten import WhiteningConv` defines it
    return module_attribute(modules, name, __name__)


def whiten_geometry(node, in_shape):
    need_image(node, in_shape)
    kernel = node.options["kernel"]
    if min(in_shape[1:]) < kernel:
        raise error(node, f"{node.name}: input {fmt(in_shape)} is smaller than the kernel {kernel}x{kernel}")
    return kernel, 2 * in_shape[0] * kernel * kernel


def shape_whiten(node, in_shape, ctx):
    kernel, filters = whiten_geometry(node, in_shape)
    out = (filters, in_shape[1] - kernel + 1, in_shape[2] - kernel + 1)
    bias = filters if node.options["bias"] else 0
    per_output = in_shape[0] * kernel * kernel
    return Inferred(out, trainable=bias, non_trainable=filters * per_output,
                    macs=out[0] * out[1] * out[2] * per_output)


def build_whiten(node, in_shape, ctx):
    kernel, _ = whiten_geometry(node, in_shape)
    return one(node, modules()["WhiteningConv"](in_shape[0], kernel, eps=node.options["eps"],
                                                bias=node.options["bias"],
                                                bias_epochs=node.options.get("bias_epochs")))


WHITEN_OPTIONS = {
    "description": "conv with 2 * C * kernel^2 frozen filters from the patch covariance of training images (airbench)",
    "properties": {
        "kernel": {
            "type": "integer",
            "minimum": 1,
            "description": "patch size",
            "maximum": 64,
            "default": 2,
        },
        "eps": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": "added to the eigenvalues before scaling",
            "default": 0.0005,
        },
        "bias": {
            "type": "boolean",
            "default": True,
            "description": "learn an additive bias per output channel",
        },
        "bias_epochs": {
            "type": "integer",
            "minimum": 1,
            "description": "train the bias only during the first N epochs, then freeze it (airbench: 3); absent: every epoch",
        },
    },
    "x-example": [{"whiten": {"kernel": 2}}],
}


register_layer("whiten", LayerRule(shape_whiten, build_whiten, weighted=True), schema=WHITEN_OPTIONS)
