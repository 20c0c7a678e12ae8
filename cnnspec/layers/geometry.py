"""What every layer type's shape rule and builder share: where a spec error points,
how shapes print, the window arithmetic of convs and pools, and torch imported on first use.

Shapes are tuples without the batch: (C, H, W) or (F,). A shape rule raises SpecError
naming the layer, its line and the shapes when the spec cannot work.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from cnnspec.errors import SpecError
from cnnspec.layers.registry import Inferred

if TYPE_CHECKING:
    from cnnspec.spec.nodes import LayerNode


class LazyModule:
    """Imports a module on first attribute access: the shape rules never touch torch."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute):
        return getattr(importlib.import_module(self._name), attribute)


torch = LazyModule("torch")
nn = LazyModule("torch.nn")


def torch_modules(*classes) -> dict:
    """{name: class} for nn.Module classes defined inside a function: each is named as if
    written at the top of its file, so pickle and torch.save find it there."""
    for cls in classes:
        cls.__qualname__ = cls.__name__
    return {cls.__name__: cls for cls in classes}


def module_attribute(modules, name: str, module_name: str):
    """A type file's module __getattr__: its nn.Module classes by name, torch imported then."""
    if name[:1].isupper() and name in modules():
        return modules()[name]
    raise AttributeError(f"module {module_name!r} has no attribute {name!r}")


def error(node: LayerNode, message: str, option: str | None = None) -> SpecError:
    where = node.option_where.get(option) if option else None
    where = where or node.where
    key = f"{node.path}.{option}" if option else node.path
    return SpecError(message, file=where.file if where else None,
                     line=where.line if where else None, col=where.col if where else None,
                     key=key)


def fmt(shape: tuple) -> str:
    return "x".join(str(size) for size in shape)


def pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def count(node: LayerNode, option: str, ctx) -> int:
    """filters / units: an int or the string num_classes."""
    value = node.options[option]
    return ctx.num_classes if value == "num_classes" else int(value)


def need_image(node: LayerNode, in_shape: tuple, what: str = "an image input (C, H, W)"):
    if len(in_shape) != 3:
        raise error(node, f"{node.name}: needs {what}, got the flat input {fmt(in_shape)}")


def one(node: LayerNode, module) -> list:
    return [(node.name, module)]


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's "same": output ceil(size / stride), the extra pixel at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def spatial(node, in_shape, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    """Output (H, W) and the (top, bottom, left, right) padding of a conv or pool window;
    ceil_mode: PyTorch's pooling rule (a last, partial window counts, unless it would start
    in the padding on the right)."""
    _, height, width = in_shape
    if padding == "same":
        pads = same_padding(height, kernel[0], stride[0], dilation[0]) + \
            same_padding(width, kernel[1], stride[1], dilation[1])
    elif padding == "valid":
        pads = (0, 0, 0, 0)
    elif padding == "symmetric":  # PyTorch's usual padding=(k - 1) // 2: the same on both sides
        ph, pw = (d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        pads = (ph, ph, pw, pw)
    else:
        ph, pw = pair(padding)
        pads = (ph, ph, pw, pw)
    sizes = []
    for size, k, s, d, total in ((height, kernel[0], stride[0], dilation[0], pads[0] + pads[1]),
                                  (width, kernel[1], stride[1], dilation[1], pads[2] + pads[3])):
        span = d * (k - 1) + 1
        if size + total < span:
            raise error(node, f"{node.name}: input {fmt(in_shape)} is smaller than the kernel "
                              f"{kernel[0]}x{kernel[1]}" + (f" (dilation {d})" if d > 1 else ""))
        out = (size + total - span) // s + 1
        if ceil_mode:
            out = -(-(size + total - span) // s) + 1
            if (out - 1) * s >= size + total // 2:
                out -= 1
        sizes.append(out)
    return tuple(sizes), pads


def even_symmetric_kernel(kernel, padding) -> tuple | None:
    """The even kernel that `padding: symmetric` pads (k - 1) // 2 > 0 on each side: unlike an
    odd one it shifts every window (ConvNeXt's 4x4 stride-4 stem has padding 0)."""
    if padding == "symmetric" and any(k % 2 == 0 and k >= 4 for k in kernel):
        return kernel
    return None


def warn_even_symmetric(node, kernel, ctx) -> None:
    if even_symmetric_kernel(kernel, node.options["padding"]):
        pads = "x".join(str((k - 1) // 2) for k in kernel)
        ctx.warn(node, f"{node.name}: padding symmetric with the even kernel {fmt(kernel)} pads {pads} on "
                       f"every side ((kernel - 1) // 2), so each window sits off the unpadded grid; a "
                       f"PyTorch model with an even kernel usually has padding 0 (ConvNeXt's stem): write "
                       f"padding: valid, or the number of pixels if this is meant", "padding")


def symmetric(pads) -> bool:
    return pads[0] == pads[1] and pads[2] == pads[3]


def shape_free(node, in_shape, ctx):
    return Inferred(in_shape)


def shape_image_free(node, in_shape, ctx):
    """Any image input passes through unchanged."""
    need_image(node, in_shape)
    return Inferred(in_shape)
