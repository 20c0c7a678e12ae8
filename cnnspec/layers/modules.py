"""The few nn.Modules torch lacks, used by the layer builders in layers.py.

Plain modules: each forward is ordinary tensor code, nothing reads the spec at run time,
so they trace, compile and export like hand-written ones. Augmentation modules act on
whole batches on the batch's device, only in training mode, each image with its own
random draw from torch's generator (reproducible under torch.manual_seed).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Residual(nn.Module):
    """activation(body(pre(x)) + shortcut(x or pre(x)))."""

    def __init__(self, body: nn.Module, shortcut: nn.Module, pre: nn.Module | None = None,
                 shortcut_from_pre: bool = False, activation: nn.Module | None = None):
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.body = body
        self.shortcut = shortcut
        self.activation = activation if activation is not None else nn.Identity()
        self.shortcut_from_pre = shortcut_from_pre

    def forward(self, x):
        pre = self.pre(x)
        shortcut = self.shortcut(pre if self.shortcut_from_pre else x)
        return self.activation(self.body(pre) + shortcut)


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


class Scale(nn.Module):
    """Multiply by a constant (airbench's logit scale 1/9)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor

    def extra_repr(self):
        return f"factor={self.factor}"


class GlobalPool(nn.Module):
    """Average or max over H and W: (N, C, H, W) -> (N, C), or (N, C, 1, 1) with keep_dims;
    over="channels": over C instead, (N, C, H, W) -> (N, 1, H, W)."""

    def __init__(self, kind: str = "avg", keep_dims: bool = False, over: str = "spatial"):
        super().__init__()
        self.kind, self.over = kind, over
        self.dims, self.keep_dims = ((1,), True) if over == "channels" else ((2, 3), keep_dims)

    def forward(self, x):
        if self.kind == "avg":
            return x.mean(self.dims, keepdim=self.keep_dims)
        return x.amax(self.dims, keepdim=self.keep_dims)

    def extra_repr(self):
        return f"{self.kind}, over={self.over}, keep_dims={self.keep_dims}"


class RandomFlip(nn.Module):
    """Flip each image with probability 1/2, per axis; training mode only."""

    AXES = {"horizontal": (3,), "vertical": (2,), "horizontal_and_vertical": (3, 2)}

    def __init__(self, mode: str = "horizontal"):
        super().__init__()
        self.mode = mode
        self.axes = self.AXES[mode]

    def forward(self, x):
        if not self.training:
            return x
        for axis in self.axes:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(axis), x)
        return x

    def extra_repr(self):
        return self.mode


def random_shift(x, pad_h: int, pad_w: int, mode: str):
    """Shift each image by a random whole number of pixels in [-pad, pad], filling the edge."""
    from cnnspec.training.augment import random_shift as shift

    return shift(x, (pad_h, pad_w), None, mode)


class RandomTranslation(nn.Module):
    """Keras' RandomTranslation in whole pixels: shift by up to (pad_h, pad_w); training only."""

    def __init__(self, pad_h: int, pad_w: int, fill: str = "reflect"):
        super().__init__()
        self.pad_h, self.pad_w, self.fill = pad_h, pad_w, fill

    def forward(self, x):
        if not self.training or (self.pad_h == 0 and self.pad_w == 0):
            return x
        return random_shift(x, self.pad_h, self.pad_w, self.fill)

    def extra_repr(self):
        return f"pixels=({self.pad_h}, {self.pad_w}), fill={self.fill}"


class RandomCrop(nn.Module):
    """Pad by `padding`, then crop each image back to its size at a random place; training only."""

    def __init__(self, padding: int = 4, mode: str = "reflect"):
        super().__init__()
        self.padding, self.mode = padding, mode

    def forward(self, x):
        if not self.training or self.padding == 0:
            return x
        return random_shift(x, self.padding, self.padding, self.mode)

    def extra_repr(self):
        return f"padding={self.padding}, mode={self.mode}"


class Resize(nn.Module):
    """Resize every image to (height, width), in training and evaluation alike."""

    def __init__(self, size: tuple[int, int], mode: str = "bilinear"):
        super().__init__()
        self.size, self.mode = tuple(size), mode

    def forward(self, x):
        if self.mode == "nearest":
            return F.interpolate(x, size=self.size, mode="nearest")
        return F.interpolate(x, size=self.size, mode=self.mode, align_corners=False)

    def extra_repr(self):
        return f"size={self.size}, mode={self.mode}"


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


class Backbone(nn.Module):
    """A torchvision model's feature extractor, optionally pooled to a flat vector."""

    def __init__(self, features: nn.Module, pooling: str = "none"):
        super().__init__()
        self.features = features
        self.pool = GlobalPool(pooling) if pooling != "none" else nn.Identity()

    def forward(self, x):
        return self.pool(self.features(x))
