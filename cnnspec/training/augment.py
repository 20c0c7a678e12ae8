"""Batched data augmentation that runs where the batch already is (CPU or GPU).

Every function takes a whole batch `(N, C, H, W)` (uint8 or float) and draws one
random choice per image from a `torch.Generator` on the batch's device, so a run
with the same seed sees the same augmented images. Nothing loops over images.

In data-parallel training a batch is one rank's share of the global batch: with
`shard=(rank, world_size)` the draws are made for the whole global batch and the
rank keeps its rows, so every rank's generator stays in step with a single
process's and each image gets the draw it would get there.

`Augmentation.from_params(params["augment"], ...)` chains the ones the params
turn on, in the order flips -> translate -> crop -> cutout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnspec.layers.augmentation import SHIFT_MODES, global_count, random_shift, rank_rows  # noqa: F401


def _draw(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _where_images(mask: torch.Tensor, changed: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), changed, images)


def random_flip(images, generator, dim: int = -1, shard=None) -> torch.Tensor:
    """Mirror each image along `dim` (-1: left-right, -2: up-down) with probability 1/2."""
    mask = rank_rows(_draw(global_count(images.shape[0], shard), generator, images.device), shard) < 0.5
    return _where_images(mask, images.flip(dim), images)


def alternating_flip_mask(num_images: int, seed: int, device) -> torch.Tensor:
    """The epoch-0 flip decision of every image in the dataset, from its own seed so a
    resumed run rebuilds the same mask without replaying the data generator."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return _draw(num_images, generator, device) < 0.5


def alternating_flip(images, indices, epoch: int, first_epoch_mask) -> torch.Tensor:
    """airbench's flip: in epoch 0 image i is flipped when first_epoch_mask[i]; in every
    later epoch it is flipped exactly when it was not in the epoch before. Every image is
    thus seen both ways in any two consecutive epochs. `indices` are the batch's positions
    in the dataset."""
    mask = first_epoch_mask[indices] ^ bool(epoch % 2)
    return _where_images(mask, images.flip(-1), images)


def cutout(images, size: int, generator, shard=None) -> torch.Tensor:
    """Zero a size x size square at a random place, wholly inside each image."""
    if size <= 0:
        return images
    n, _, height, width = images.shape
    size_y, size_x = min(size, height), min(size, width)
    device = images.device
    drawn = (global_count(n, shard), 1, 1)
    top = rank_rows(torch.randint(0, height - size_y + 1, drawn, generator=generator, device=device), shard)
    left = rank_rows(torch.randint(0, width - size_x + 1, drawn, generator=generator, device=device), shard)
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    square = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)
    return images.masked_fill(square[:, None], 0)


@dataclass
class Augmentation:
    """The training-time augmentation chosen in params.yaml `train.augment`: every
    field is set from the params, whose defaults the params schema holds."""

    hflip: bool
    vflip: bool
    translate: int
    crop_padding: int
    cutout: int
    first_epoch_flips: torch.Tensor | None = None  # set when alternating_flip is on
    shard: tuple[int, int] | None = None  # (rank, world_size) in data-parallel training

    @classmethod
    def from_params(cls, options: dict, num_images: int, seed: int, device) -> Augmentation:
        """From `train.augment` as load_params returns it (every key filled in)."""
        mask = alternating_flip_mask(num_images, seed, device) if options["alternating_flip"] else None
        return cls(hflip=bool(options["hflip"]), vflip=bool(options["vflip"]),
                   translate=int(options["translate"]), crop_padding=int(options["crop_padding"]),
                   cutout=int(options["cutout"]), first_epoch_flips=mask)

    def __call__(self, images, indices, epoch: int, generator) -> torch.Tensor:
        if self.first_epoch_flips is not None:
            images = alternating_flip(images, indices, epoch, self.first_epoch_flips)
        elif self.hflip:
            images = random_flip(images, generator, dim=-1, shard=self.shard)
        if self.vflip:
            images = random_flip(images, generator, dim=-2, shard=self.shard)
        images = random_shift(images, self.translate, generator, mode="reflect", shard=self.shard)
        # A random crop of the original size after zero padding (torchvision's RandomCrop).
        images = random_shift(images, self.crop_padding, generator, mode="zeros", shard=self.shard)
        return cutout(images, self.cutout, generator, shard=self.shard)
