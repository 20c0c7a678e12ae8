"""Augmentation layer types that act inside the model, in training mode only, on whole
batches on the batch's device: `random_flip`, `random_translation`, `random_crop`; and
`random_shift`, the one gather they (and the training pipeline's augmentations) use.
"""
from __future__ import annotations

import functools

from cnnspec.layers.geometry import error, fmt, module_attribute, need_image, one, torch, torch_modules
from cnnspec.layers.registry import Inferred, LayerRule, register_layer


@functools.cache
def modules():
    """This file's nn.Modules, defined on first use so that the shape rules never import torch."""
    import torch
    from torch import nn

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

    class RandomTranslation(nn.Module):
        """Keras' RandomTranslation in whole pixels: shift by up to (pad_h, pad_w); training only."""

        def __init__(self, pad_h: int, pad_w: int, fill: str = "reflect"):
            super().__init__()
            self.pad_h, self.pad_w, self.fill = pad_h, pad_w, fill

        def forward(self, x):
            if not self.training or (self.pad_h == 0 and self.pad_w == 0):
                return x
            return random_shift(x, (self.pad_h, self.pad_w), None, self.fill)

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
            return random_shift(x, self.padding, None, self.mode)

        def extra_repr(self):
            return f"padding={self.padding}, mode={self.mode}"

    return torch_modules(RandomFlip, RandomTranslation, RandomCrop)


def __getattr__(name):  # `from cnnspec.layers.augmentation import RandomFlip` defines it
    return module_attribute(modules, name, __name__)


def rank_rows(draws: torch.Tensor, shard) -> torch.Tensor:
    """This rank's rows of draws made for the whole global batch (`shard` None: all)."""
    if shard is None:
        return draws
    rank, world_size = shard
    share = len(draws) // world_size
    return draws[rank * share:(rank + 1) * share]


def global_count(n: int, shard) -> int:
    return n if shard is None else n * shard[1]


def reflect_positions(positions: torch.Tensor, size: int) -> torch.Tensor:
    """Map positions in [-size+1, 2*size-2] into [0, size) by mirroring at the edges
    (the 'reflect' padding of numpy/torch: the edge pixel is not repeated)."""
    positions = positions.abs()
    return torch.where(positions > size - 1, 2 * (size - 1) - positions, positions)


SHIFT_MODES = ("reflect", "zeros")  # how random_shift fills the edge it uncovers


def random_shift(images, max_shift, generator=None, mode: str = "reflect", shard=None) -> torch.Tensor:
    """Shift each image by its own (dy, dx), uniform in [-max_shift, max_shift]
    (`max_shift` one int, or (rows, columns)). `generator` None draws from torch's
    global generator (what a spec's random_translation / random_crop layers use).

    Equivalent to padding by `max_shift` (reflect or zeros) and cropping the original
    size at a random offset, but done as one gather, so it works on uint8 too and never
    allocates the padded batch."""
    if mode not in SHIFT_MODES:
        raise ValueError(f"random_shift mode {mode!r} is not one of {SHIFT_MODES}")
    shift_y, shift_x = (max_shift, max_shift) if isinstance(max_shift, int) else max_shift
    if shift_y <= 0 and shift_x <= 0:
        return images
    n, _, height, width = images.shape
    if mode == "reflect" and (shift_y >= height or shift_x >= width):
        raise ValueError(f"a reflect shift of {shift_y}x{shift_x} needs images larger than {height}x{width}")
    device = images.device
    drawn = (global_count(n, shard), 1)
    dy = rank_rows(torch.randint(-shift_y, shift_y + 1, drawn, generator=generator, device=device), shard)
    dx = rank_rows(torch.randint(-shift_x, shift_x + 1, drawn, generator=generator, device=device), shard)
    rows = dy + torch.arange(height, device=device)  # (N, H): source row of each output row
    cols = dx + torch.arange(width, device=device)  # (N, W)
    inside = None
    if mode == "zeros":
        inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
        rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
    else:
        rows, cols = reflect_positions(rows, height), reflect_positions(cols, width)
    batch = torch.arange(n, device=device)[:, None, None]
    shifted = images[batch, :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    shifted = shifted.permute(0, 3, 1, 2)
    if inside is not None:
        shifted = shifted * inside[:, None].to(shifted.dtype)
    return shifted.contiguous()


def translation_pixels(node, in_shape) -> tuple[int, int]:
    height = node.options["height"]
    width = node.options["width"]
    return round(height * in_shape[1]), round(width * in_shape[2])


def shape_augment(node, in_shape, ctx):
    need_image(node, in_shape)
    if node.type == "random_translation":
        o = node.options
        shifts = translation_pixels(node, in_shape)
        if o["fill"] == "reflect" and (shifts[0] >= in_shape[1] or shifts[1] >= in_shape[2]):
            raise error(node, f"{node.name}: a shift of {shifts} pixels needs a larger input than "
                              f"{fmt(in_shape)} for reflect fill")
    if node.type == "random_crop" and node.options["mode"] == "reflect" and \
            node.options["padding"] >= min(in_shape[1:]):
        raise error(node, f"{node.name}: reflect padding {node.options['padding']} needs "
                          f"an input larger than {fmt(in_shape)}", "padding")
    return Inferred(in_shape)


AUGMENTS = {
    "random_flip": lambda node, in_shape: modules()["RandomFlip"](node.options["mode"]),
    "random_translation": lambda node, in_shape: modules()["RandomTranslation"](
        *translation_pixels(node, in_shape), fill=node.options["fill"]),
    "random_crop": lambda node, in_shape: modules()["RandomCrop"](
        node.options["padding"], mode=node.options["mode"]),
}


def build_augment(node, in_shape, ctx):
    return one(node, AUGMENTS[node.type](node, in_shape))


RANDOM_FLIP_OPTIONS = {
    "description": "random flips of each image; training mode only",
    "properties": {
        "mode": {
            "type": "string",
            "enum": ["horizontal", "vertical", "horizontal_and_vertical"],
            "description": "which flips",
            "default": "horizontal",
        },
    },
    "x-shorthand": "mode",
    "x-example": ["random_flip"],
}

RANDOM_TRANSLATION_OPTIONS = {
    "description": "random shifts of each image; training mode only",
    "properties": {
        "height": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "largest vertical shift, as a fraction of the height",
        },
        "width": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": 1,
            "default": None,
            "x-default-from": "height",
            "description": "largest horizontal shift, as a fraction of the width (null = height)",
        },
        "fill": {
            "type": "string",
            "enum": ["reflect", "zeros"],
            "description": "what fills the uncovered border",
            "default": "reflect",
        },
    },
    "required": ["height"],
    "x-example": [{"random_translation": {"height": 0.1}}],
}

RANDOM_CROP_OPTIONS = {
    "description": "pads, then crops a random window of the input size; training mode only",
    "properties": {
        "padding": {
            "type": "integer",
            "minimum": 0,
            "description": "pixels added on each side before cropping",
            "maximum": 4096,
            "default": 4,
        },
        "mode": {
            "type": "string",
            "enum": ["reflect", "zeros"],
            "description": "what the padding holds",
            "default": "reflect",
        },
    },
    "x-shorthand": "padding",
    "x-example": [{"random_crop": 2}],
}


register_layer("random_flip", LayerRule(shape_augment, build_augment), schema=RANDOM_FLIP_OPTIONS)
register_layer("random_translation", LayerRule(shape_augment, build_augment), schema=RANDOM_TRANSLATION_OPTIONS)
register_layer("random_crop", LayerRule(shape_augment, build_augment), schema=RANDOM_CROP_OPTIONS)
