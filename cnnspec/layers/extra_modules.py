"""nn.Modules of the layer types in channel_norm.py, residual_branch.py and channels.py.

Kept apart from their shape rules so that importing the registry (cnnspec summary,
cnnspec validate) never imports torch. Plain tensor code: they trace, compile and export.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """nn.LayerNorm over the channels of an (N, C, H, W) map, each position on its own
    (torchvision's ConvNeXt LayerNorm2d: the same weight and bias, the same result)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """A learned scale per channel, started at a small value (ConvNeXt, CaiT): the weight
    is (C, 1, 1) on an image, (C,) on a flat input, as torchvision's CNBlock.layer_scale."""

    def __init__(self, shape: tuple, value: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full(shape, float(value)))

    def forward(self, x):
        return x * self.weight

    def extra_repr(self):
        return f"channels={self.weight.shape[0]}"


class DropPath(nn.Module):
    """Stochastic depth (torchvision's StochasticDepth, mode "row"): in training, each
    sample's input is zeroed with probability `rate` and the others divided by 1 - rate;
    the identity in evaluation. The last layer of a residual body drops the whole branch."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        return x * mask.bernoulli_(keep).div_(keep)

    def extra_repr(self):
        return f"rate={self.rate}"


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
