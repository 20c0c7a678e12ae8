"""The layer registry: for every layer type of the spec language, a shape rule and a builder.

    LAYERS["conv"].shape(node, in_shape, ctx) -> Inferred(out_shape, trainable, non_trainable, macs)
    LAYERS["conv"].build(node, in_shape, ctx) -> [(module_name, nn.Module), ...]

Shapes are tuples without the batch: (C, H, W) or (F,). A shape rule raises SpecError
naming the layer, its line and the shapes when the spec cannot work, and counts the layer's
own parameters and multiply-accumulates analytically, so `cnnspec summary` never imports
torch (about 2-4 s here) unless the spec holds a backbone.

A builder returns the layer's modules as (name, module) pairs, nearly always one pair
named after the layer, so state_dict keys read `layers.conv_1.weight`. A conv with an
activation adds a sibling `conv_1_relu`; an asymmetric "same" padding adds `conv_1_pad`.

`Context` walks a layer list: `infer` runs every shape rule first (all shape errors before
anything is built) and records one `Record` per layer; `build_list` then builds them.
"""
from __future__ import annotations

import importlib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cnnspec.errors import DataError, SpecError
from cnnspec.nodes import LayerNode


class LazyModule:
    """Imports a module on first attribute access: the shape rules never touch torch."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute):
        return getattr(importlib.import_module(self._name), attribute)


torch = LazyModule("torch")
nn = LazyModule("torch.nn")
modules = LazyModule("cnnspec.modules")


# ---------------------------------------------------------------- walking a layer tree

@dataclass
class Inferred:
    """What a shape rule returns: the output shape and the layer's own costs."""

    out_shape: tuple
    trainable: int = 0
    non_trainable: int = 0
    macs: int = 0


@dataclass
class Record:
    """One layer of an inferred spec, in order (a parent before its children)."""

    node: LayerNode
    in_shape: tuple
    out_shape: tuple
    depth: int
    trainable: int = 0  # own parameters, plus those of its children once walked
    non_trainable: int = 0
    macs: int = 0
    children: list = field(default_factory=list)


@dataclass
class Context:
    num_classes: int = 10
    load_weights: bool = True  # backbone: fetch ImageNet weights when the spec asks for them
    records: list = field(default_factory=list)
    softmax_node: LayerNode | None = None  # the final softmax folded into the loss
    param_settings: dict = field(default_factory=dict)  # id(parameter) -> layer options
    _depth: int = -1
    _frozen: int = 0
    _in_shapes: dict = field(default_factory=dict)
    _out_shapes: dict = field(default_factory=dict)
    _backbones: dict = field(default_factory=dict)

    # -- shape inference
    def infer_list(self, nodes: list[LayerNode], in_shape: tuple) -> tuple:
        """Run every node's shape rule in order; return the last output shape."""
        shape = in_shape
        for node in nodes:
            shape = self.infer(node, shape).out_shape
        return shape

    def infer(self, node: LayerNode, in_shape: tuple) -> Record:
        rule = rule_for(node)
        frozen = not node.options.get("trainable", True)
        record = Record(node, in_shape, in_shape, self._depth + 1)
        self.records.append(record)
        first_child = len(self.records)
        self._depth += 1
        self._frozen += frozen
        try:
            inferred = rule.shape(node, in_shape, self)
        finally:
            self._depth -= 1
            self._frozen -= frozen
        record.out_shape = tuple(inferred.out_shape)
        record.trainable, record.non_trainable = inferred.trainable, inferred.non_trainable
        if self._frozen or frozen:
            record.trainable, record.non_trainable = 0, inferred.trainable + inferred.non_trainable
        record.macs = inferred.macs
        record.children = [r for r in self.records[first_child:] if r.depth == record.depth + 1]
        self._in_shapes[id(node)] = in_shape
        self._out_shapes[id(node)] = record.out_shape
        return record

    def out_shape(self, node: LayerNode) -> tuple:
        return self._out_shapes[id(node)]

    # -- building
    def build_list(self, nodes: list[LayerNode]):
        """The modules of a layer list as one nn.Sequential, named by layer."""
        named = OrderedDict()
        for node in nodes:
            for name, module in self.build(node):
                if name in named:
                    raise error(node, f"{node.type} {node.name!r}: module name {name!r} is already used")
                named[name] = module
        return nn.Sequential(named)

    def build(self, node: LayerNode) -> list:
        pairs = rule_for(node).build(node, self._in_shapes[id(node)], self)
        if not node.options.get("trainable", True):
            for _, module in pairs:
                module.requires_grad_(False)
        if node.type in WEIGHTED:
            settings = {key: node.options.get(key, default) for key, default in
                        (("l2", 0.0), ("lr_mult", 1.0), ("wd_mult", 1.0))}
            for _, module in pairs:
                kernel = getattr(module, "weight", None)
                for parameter in module.parameters():
                    self.param_settings[id(parameter)] = dict(
                        settings, l2=settings["l2"] if parameter is kernel else 0.0)
        return pairs


def infer_tree(nodes: list[LayerNode], in_shape: tuple, num_classes: int = 10,
               load_weights: bool = True) -> Context:
    """Infer every layer's shape and costs; the records are in `ctx.records`."""
    ctx = Context(num_classes=num_classes, load_weights=load_weights)
    ctx.infer_list(nodes, tuple(in_shape))
    return ctx


@dataclass(frozen=True)
class LayerRule:
    shape: Callable[[LayerNode, tuple, Context], Inferred]
    build: Callable[[LayerNode, tuple, Context], list]


def rule_for(node: LayerNode) -> LayerRule:
    if node.type not in LAYERS:
        raise error(node, f"{node.name}: unknown layer type {node.type!r}")
    return LAYERS[node.type]


# ---------------------------------------------------------------- small helpers

WEIGHTED = {"conv", "dense", "bn", "whiten", "backbone"}


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


def count(node: LayerNode, option: str, ctx: Context) -> int:
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


def spatial(node, in_shape, kernel, stride, padding, dilation=(1, 1)):
    """Output (H, W) and the (top, bottom, left, right) padding of a conv or pool window."""
    _, height, width = in_shape
    if padding == "same":
        pads = same_padding(height, kernel[0], stride[0], dilation[0]) + \
            same_padding(width, kernel[1], stride[1], dilation[1])
    elif padding == "valid":
        pads = (0, 0, 0, 0)
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
        sizes.append((size + total - span) // s + 1)
    return tuple(sizes), pads


def symmetric(pads) -> bool:
    return pads[0] == pads[1] and pads[2] == pads[3]


# ---------------------------------------------------------------- activations

ACTIVATIONS = {
    "relu": lambda o: nn.ReLU(),
    "gelu": lambda o: nn.GELU(),
    "elu": lambda o: nn.ELU(alpha=o.get("alpha", 1.0)),
    "celu": lambda o: nn.CELU(alpha=o.get("alpha", 1.0)),
    "silu": lambda o: nn.SiLU(),
    "leaky_relu": lambda o: nn.LeakyReLU(negative_slope=o.get("negative_slope", 0.01)),
    "tanh": lambda o: nn.Tanh(),
    "sigmoid": lambda o: nn.Sigmoid(),
    "softmax": lambda o: nn.Softmax(dim=1),
    "identity": lambda o: nn.Identity(),
}


def activation_of(node: LayerNode, ctx: Context, option: str = "activation") -> str:
    """The activation a layer applies; a final softmax is folded into the loss instead."""
    fn = node.options.get(option, "identity")
    if fn not in ACTIVATIONS:
        raise error(node, f"{node.name}: unknown activation {fn!r}", option)
    return "identity" if node is ctx.softmax_node else fn


def with_activation(node: LayerNode, ctx: Context, pairs: list) -> list:
    fn = activation_of(node, ctx)
    if fn != "identity":
        pairs.append((f"{node.name}_{fn}", ACTIVATIONS[fn](node.options)))
    return pairs


def shape_activation(node, in_shape, ctx):
    activation_of(node, ctx, "fn")
    return Inferred(in_shape)


def build_activation(node, in_shape, ctx):
    return one(node, ACTIVATIONS[activation_of(node, ctx, "fn")](node.options))


# ---------------------------------------------------------------- weight initialisation

def init_dirac(weight):
    """airbench's identity init: the first min(out, in) filters pass their channel through."""
    if weight.dim() == 2:
        nn.init.eye_(weight)
    else:
        nn.init.dirac_(weight[:weight.shape[1]])


INITS = {
    "default": None,
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "xavier_normal": lambda w: nn.init.xavier_normal_(w),
    "xavier_uniform": lambda w: nn.init.xavier_uniform_(w),
    "dirac": init_dirac,
    "zeros": lambda w: nn.init.zeros_(w),
}


def initialise(node: LayerNode, module):
    name = node.options.get("init", "default")
    if name not in INITS:
        raise error(node, f"{node.name}: unknown init {name!r}", "init")
    if INITS[name] is not None:
        with torch.no_grad():
            INITS[name](module.weight)
            if module.bias is not None:
                module.bias.zero_()


# ---------------------------------------------------------------- conv, dense, bn

def conv_geometry(node, in_shape, ctx):
    need_image(node, in_shape)
    o = node.options
    kernel, stride, dilation = pair(o.get("kernel", 3)), pair(o.get("stride", 1)), pair(o.get("dilation", 1))
    (height, width), pads = spatial(node, in_shape, kernel, stride, o.get("padding", "same"), dilation)
    filters, groups = count(node, "filters", ctx), o.get("groups", 1)
    if in_shape[0] % groups or filters % groups:
        raise error(node, f"{node.name}: groups {groups} must divide the input channels "
                          f"{in_shape[0]} and the filters {filters}", "groups")
    return kernel, stride, dilation, pads, filters, groups, (filters, height, width)


def shape_conv(node, in_shape, ctx):
    kernel, _, _, _, filters, groups, out = conv_geometry(node, in_shape, ctx)
    activation_of(node, ctx)
    per_output = in_shape[0] // groups * kernel[0] * kernel[1]
    bias = filters if node.options.get("bias", True) else 0
    return Inferred(out, trainable=filters * per_output + bias,
                    macs=out[0] * out[1] * out[2] * per_output)


def build_conv(node, in_shape, ctx):
    kernel, stride, dilation, pads, filters, groups, _ = conv_geometry(node, in_shape, ctx)
    pairs = []
    if not symmetric(pads):  # TensorFlow's "same" with a stride: pad the extra pixel at the end
        pairs.append((f"{node.name}_pad", nn.ZeroPad2d((pads[2], pads[3], pads[0], pads[1]))))
        pads = (0, 0, 0, 0)
    conv = nn.Conv2d(in_shape[0], filters, kernel, stride=stride, padding=(pads[0], pads[2]),
                     dilation=dilation, groups=groups, bias=node.options.get("bias", True))
    initialise(node, conv)
    pairs.append((node.name, conv))
    return with_activation(node, ctx, pairs)


def shape_dense(node, in_shape, ctx):
    if len(in_shape) != 1:
        raise error(node, f"{node.name}: input {fmt(in_shape)} is not flat; add a flatten or "
                          f"global_avg_pool layer before this dense layer")
    activation_of(node, ctx)
    units = count(node, "units", ctx)
    bias = units if node.options.get("bias", True) else 0
    return Inferred((units,), trainable=in_shape[0] * units + bias, macs=in_shape[0] * units)


def build_dense(node, in_shape, ctx):
    dense = nn.Linear(in_shape[0], count(node, "units", ctx), bias=node.options.get("bias", True))
    initialise(node, dense)
    return with_activation(node, ctx, [(node.name, dense)])


def shape_bn(node, in_shape, ctx):
    if len(in_shape) not in (1, 3):
        raise error(node, f"{node.name}: batch norm needs a flat or image input, got {fmt(in_shape)}")
    channels = in_shape[0]
    if not node.options.get("affine", True):
        return Inferred(in_shape, non_trainable=2 * channels)  # moving mean and variance only
    frozen_weight = not node.options.get("weight_trainable", True)
    return Inferred(in_shape, trainable=channels * (1 if frozen_weight else 2),
                    non_trainable=2 * channels + (channels if frozen_weight else 0))


def build_bn(node, in_shape, ctx):
    norm = nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d
    o = node.options
    bn = norm(in_shape[0], eps=o.get("eps", 1e-5), momentum=o.get("momentum", 0.1),
              affine=o.get("affine", True))
    if bn.affine and not o.get("weight_trainable", True):
        bn.weight.requires_grad_(False)  # gamma stays at 1 (airbench)
    return one(node, bn)


# ---------------------------------------------------------------- pooling, reshaping

def pool_geometry(node, in_shape):
    need_image(node, in_shape)
    o = node.options
    kernel = pair(o.get("kernel", 2))
    stride = pair(o.get("stride") or kernel)
    padding = o.get("padding", "valid")
    if isinstance(padding, (int, list)) and any(2 * p > k for p, k in zip(pair(padding), kernel)):
        raise error(node, f"{node.name}: padding {padding} is more than half the kernel "
                          f"{kernel[0]}x{kernel[1]}", "padding")
    (height, width), pads = spatial(node, in_shape, kernel, stride, padding)
    return kernel, stride, pads, (in_shape[0], height, width)


def shape_pool(node, in_shape, ctx):
    return Inferred(pool_geometry(node, in_shape)[3])


def build_pool(node, in_shape, ctx):
    kernel, stride, pads, _ = pool_geometry(node, in_shape)
    is_max = node.type == "max_pool"
    pairs = []
    if not symmetric(pads) or (pads[0] * 2 > kernel[0] or pads[2] * 2 > kernel[1]):
        # TensorFlow ignores the padded pixels: -inf for max; zeros (counted) for avg.
        fill = float("-inf") if is_max else 0.0
        pairs.append((f"{node.name}_pad", nn.ConstantPad2d((pads[2], pads[3], pads[0], pads[1]), fill)))
        pads = (0, 0, 0, 0)
    padding = (pads[0], pads[2])
    pool = (nn.MaxPool2d(kernel, stride, padding) if is_max else
            nn.AvgPool2d(kernel, stride, padding, count_include_pad=node.options.get("padding") != "same"))
    pairs.append((node.name, pool))
    return pairs


def shape_global_pool(node, in_shape, ctx):
    need_image(node, in_shape)
    return Inferred((in_shape[0],))


def build_global_pool(node, in_shape, ctx):
    return one(node, modules.GlobalPool("max" if node.type == "global_max_pool" else "avg"))


def shape_flatten(node, in_shape, ctx):
    return Inferred((math.prod(in_shape),))


def build_flatten(node, in_shape, ctx):
    return one(node, nn.Flatten())


def rate_of(node):
    rate = node.options["rate"]
    if not 0 <= rate < 1:
        raise error(node, f"{node.name}: rate {rate} must be in [0, 1)", "rate")
    return rate


def shape_dropout(node, in_shape, ctx):
    rate_of(node)
    return Inferred(in_shape)


def build_dropout(node, in_shape, ctx):
    return one(node, nn.Dropout(rate_of(node)))


def shape_spatial_dropout(node, in_shape, ctx):
    need_image(node, in_shape)
    rate_of(node)
    return Inferred(in_shape)


def build_spatial_dropout(node, in_shape, ctx):
    return one(node, nn.Dropout2d(rate_of(node)))


def build_scale(node, in_shape, ctx):
    return one(node, modules.Scale(float(node.options["factor"])))


def pad_sizes(node):
    padding = node.options["padding"]
    return (padding,) * 4 if isinstance(padding, int) else tuple(padding)  # top, bottom, left, right


def shape_pad(node, in_shape, ctx):
    need_image(node, in_shape)
    top, bottom, left, right = pad_sizes(node)
    if node.options.get("mode", "zeros") == "reflect" and max(top, bottom) >= in_shape[1] or \
            node.options.get("mode", "zeros") == "reflect" and max(left, right) >= in_shape[2]:
        raise error(node, f"{node.name}: reflect padding {max(top, bottom, left, right)} needs an "
                          f"input larger than it, got {fmt(in_shape)}", "padding")
    return Inferred((in_shape[0], in_shape[1] + top + bottom, in_shape[2] + left + right))


PADS = {"zeros": lambda p: nn.ZeroPad2d(p), "reflect": lambda p: nn.ReflectionPad2d(p),
        "replicate": lambda p: nn.ReplicationPad2d(p)}


def build_pad(node, in_shape, ctx):
    top, bottom, left, right = pad_sizes(node)
    return one(node, PADS[node.options.get("mode", "zeros")]((left, right, top, bottom)))


# ---------------------------------------------------------------- augmentation and resizing

def shape_augment(node, in_shape, ctx):
    need_image(node, in_shape)
    if node.type == "random_translation":
        o = node.options
        shifts = translation_pixels(node, in_shape)
        if o.get("fill", "reflect") == "reflect" and (shifts[0] >= in_shape[1] or shifts[1] >= in_shape[2]):
            raise error(node, f"{node.name}: a shift of {shifts} pixels needs a larger input than "
                              f"{fmt(in_shape)} for reflect fill")
    if node.type == "random_crop" and node.options.get("mode", "reflect") == "reflect" and \
            node.options.get("padding", 4) >= min(in_shape[1:]):
        raise error(node, f"{node.name}: reflect padding {node.options.get('padding', 4)} needs "
                          f"an input larger than {fmt(in_shape)}", "padding")
    return Inferred(in_shape)


def translation_pixels(node, in_shape) -> tuple[int, int]:
    height = node.options["height"]
    width = node.options.get("width")
    width = height if width is None else width
    return round(height * in_shape[1]), round(width * in_shape[2])


AUGMENTS = {
    "random_flip": lambda node, in_shape: modules.RandomFlip(node.options.get("mode", "horizontal")),
    "random_translation": lambda node, in_shape: modules.RandomTranslation(
        *translation_pixels(node, in_shape), fill=node.options.get("fill", "reflect")),
    "random_crop": lambda node, in_shape: modules.RandomCrop(
        node.options.get("padding", 4), mode=node.options.get("mode", "reflect")),
}


def build_augment(node, in_shape, ctx):
    return one(node, AUGMENTS[node.type](node, in_shape))


def resize_to(node):
    height = node.options["height"]
    width = node.options.get("width")
    return height, height if width is None else width


def shape_resize(node, in_shape, ctx):
    need_image(node, in_shape)
    return Inferred((in_shape[0], *resize_to(node)))


def build_resize(node, in_shape, ctx):
    return one(node, modules.Resize(resize_to(node), node.options.get("mode", "bilinear")))


# ---------------------------------------------------------------- whitening conv (airbench)

def whiten_geometry(node, in_shape):
    need_image(node, in_shape)
    kernel = node.options.get("kernel", 2)
    if min(in_shape[1:]) < kernel:
        raise error(node, f"{node.name}: input {fmt(in_shape)} is smaller than the kernel {kernel}x{kernel}")
    return kernel, 2 * in_shape[0] * kernel * kernel


def shape_whiten(node, in_shape, ctx):
    kernel, filters = whiten_geometry(node, in_shape)
    out = (filters, in_shape[1] - kernel + 1, in_shape[2] - kernel + 1)
    bias = filters if node.options.get("bias", True) else 0
    per_output = in_shape[0] * kernel * kernel
    return Inferred(out, trainable=bias, non_trainable=filters * per_output,
                    macs=out[0] * out[1] * out[2] * per_output)


def build_whiten(node, in_shape, ctx):
    kernel, _ = whiten_geometry(node, in_shape)
    return one(node, modules.WhiteningConv(in_shape[0], kernel, eps=node.options.get("eps", 5e-4),
                                           bias=node.options.get("bias", True),
                                           bias_epochs=node.options.get("bias_epochs")))


# ---------------------------------------------------------------- composites

def shape_group(node, in_shape, ctx):
    return Inferred(ctx.infer_list(node.children.get("layers", []), in_shape))


def build_group(node, in_shape, ctx):
    return one(node, ctx.build_list(node.children.get("layers", [])))


def shortcut_kind(node, source, body_out):
    if "shortcut" in node.children:
        return "layers"
    kind = node.options.get("shortcut", "auto")
    if kind == "auto":
        return "identity" if tuple(source) == tuple(body_out) else "projection"
    return kind


def shortcut_stride(node, source, body_out) -> tuple[int, int]:
    """The stride that takes the shortcut's input to the body's output size."""
    if len(source) != 3 or len(body_out) != 3:
        raise error(node, f"{node.name}: a projection or pool shortcut needs image shapes; "
                          f"the input is {fmt(source)} and the body gives {fmt(body_out)}", "shortcut")
    strides = []
    for size, out in zip(source[1:], body_out[1:]):
        stride = -(-size // out)
        if -(-size // stride) != out:
            raise error(node, f"{node.name}: no stride takes the shortcut's {fmt(source)} to the "
                              f"body's {fmt(body_out)}", "shortcut")
        strides.append(stride)
    return tuple(strides)


def residual_shapes(node, in_shape, ctx):
    pre_out = ctx.infer_list(node.children.get("pre", []), in_shape)
    body_out = ctx.infer_list(node.children["body"], pre_out)
    source = pre_out if node.options.get("shortcut_from", "input") == "pre" else in_shape
    return pre_out, body_out, source


def shape_residual(node, in_shape, ctx):
    _, body_out, source = residual_shapes(node, in_shape, ctx)
    activation_of(node, ctx)
    kind = shortcut_kind(node, source, body_out)
    own = Inferred(body_out)
    if kind == "layers":
        short_out = ctx.infer_list(node.children["shortcut"], source)
    elif kind == "identity":
        short_out = source
    elif kind == "pool":
        stride = shortcut_stride(node, source, body_out)
        short_out = (source[0], *(-(-s // k) for s, k in zip(source[1:], stride)))
    elif kind == "projection":
        shortcut_stride(node, source, body_out)
        short_out = body_out
        own.trainable = source[0] * body_out[0] + 2 * body_out[0]
        own.non_trainable = 2 * body_out[0]
        own.macs = math.prod(body_out) * source[0]
    else:
        raise error(node, f"{node.name}: unknown shortcut {kind!r}", "shortcut")
    if tuple(short_out) != tuple(body_out):
        raise error(node, f"{node.name}: cannot add the shortcut {fmt(short_out)} to the body's "
                          f"output {fmt(body_out)}", "shortcut")
    return own


def build_residual(node, in_shape, ctx):
    pre_out, body_out, source = residual_shapes_recorded(node, in_shape, ctx)
    kind = shortcut_kind(node, source, body_out)
    if kind == "layers":
        shortcut = ctx.build_list(node.children["shortcut"])
    elif kind == "pool":
        stride = shortcut_stride(node, source, body_out)
        shortcut = nn.Identity() if stride == (1, 1) else nn.MaxPool2d(1, stride)
    elif kind == "projection":
        shortcut = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(source[0], body_out[0], 1, stride=shortcut_stride(node, source, body_out), bias=False),
            bn=nn.BatchNorm2d(body_out[0])))
    else:
        shortcut = nn.Identity()
    fn = activation_of(node, ctx)
    return one(node, modules.Residual(
        body=ctx.build_list(node.children["body"]), shortcut=shortcut,
        pre=ctx.build_list(node.children["pre"]) if node.children.get("pre") else None,
        shortcut_from_pre=node.options.get("shortcut_from", "input") == "pre",
        activation=ACTIVATIONS[fn](node.options)))


def residual_shapes_recorded(node, in_shape, ctx):
    """The shapes the inference pass recorded (no second walk, no duplicate records)."""
    pre = node.children.get("pre", [])
    pre_out = ctx.out_shape(pre[-1]) if pre else in_shape
    body_out = ctx.out_shape(node)
    source = pre_out if node.options.get("shortcut_from", "input") == "pre" else in_shape
    return pre_out, body_out, source


def branches(node) -> list[list[LayerNode]]:
    return [node.children[key] for key in sorted(node.children, key=lambda k: int(k.split("_")[1]))
            if key.startswith("branch_")]


def shape_parallel(node, in_shape, ctx):
    outs = [ctx.infer_list(branch, in_shape) for branch in branches(node)]
    if len(outs) < 2:
        raise error(node, f"{node.name}: parallel needs at least 2 branches, got {len(outs)}", "branches")
    merge = node.options.get("merge", "concat")
    shown = " and ".join(fmt(out) for out in outs)
    if merge == "add":
        if len({tuple(out) for out in outs}) > 1:
            raise error(node, f"{node.name}: cannot add branches of shapes {shown}", "merge")
        return Inferred(outs[0])
    if len({(len(out), *out[1:]) for out in outs}) > 1:
        raise error(node, f"{node.name}: cannot concatenate branches of shapes {shown} on channels",
                    "merge")
    return Inferred((sum(out[0] for out in outs), *outs[0][1:]))


def build_parallel(node, in_shape, ctx):
    return one(node, modules.Parallel([ctx.build_list(branch) for branch in branches(node)],
                                      merge=node.options.get("merge", "concat")))


# ---------------------------------------------------------------- backbone (torchvision)

def backbone_features(model_name: str, model):
    """A torchvision classifier without its classifier head."""
    if model_name.startswith(("resnet", "resnext", "wide_resnet")):
        return nn.Sequential(OrderedDict((name, getattr(model, name)) for name in
                                         ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                          "layer3", "layer4")))
    if hasattr(model, "features"):  # vgg, squeezenet, mobilenet, densenet, efficientnet, ...
        return model.features
    raise SpecError(f"backbone {model_name!r} is not supported (no .features, not a resnet)")


def backbone_meta(node, ctx):
    """The backbone's features built on the meta device (no memory, no weights), cached."""
    name = node.options["model"]
    if name not in ctx._backbones:
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise error(node, f"{node.name}: unknown torchvision model {name!r}", "model")
        with torch.device("meta"):
            features = backbone_features(name, torchvision.models.get_model(name, weights=None))
        ctx._backbones[name] = features.eval()  # batch norm in training mode rejects 1x1 maps of one image
    return ctx._backbones[name]


def pooled(node, out):
    return (out[0],) if node.options.get("pooling", "none") != "none" else out


BACKBONE_FACTS = Path(__file__).with_name("backbone_facts.json")


def measure_backbone(node, in_shape, ctx) -> dict:
    """Output shape, parameter and BN-buffer counts and MACs of a backbone's features,
    measured on the meta device (needs torch and torchvision: a few seconds)."""
    from torch.utils.flop_counter import FlopCounterMode

    features = backbone_meta(node, ctx)
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            out = features(torch.empty(1, *in_shape, device="meta")).shape[1:]
    except RuntimeError as failure:
        raise error(node, f"{node.name}: input {fmt(in_shape)} is too small for backbone "
                          f"{node.options['model']} ({str(failure).splitlines()[0]})") from None
    return {"out": list(out), "params": sum(p.numel() for p in features.parameters()),
            "buffers": sum(b.numel() for name, b in features.named_buffers()
                           if name.endswith(("running_mean", "running_var"))),
            "macs": counter.get_total_flops() // 2}


def shipped_backbone_facts(model_name: str, in_shape: tuple) -> dict | None:
    """The measurement stored in backbone_facts.json (scripts/backbone_facts.py writes it)
    for the installed torchvision, so `cnnspec summary` need not import torch."""
    from importlib.metadata import version

    facts = json.loads(BACKBONE_FACTS.read_text()) if BACKBONE_FACTS.exists() else {}
    if facts.get("torchvision") != version("torchvision"):
        return None
    return facts["models"].get(f"{model_name}@{'x'.join(map(str, in_shape))}")


def shape_backbone(node, in_shape, ctx):
    need_image(node, in_shape)
    if in_shape[0] != 3:
        raise error(node, f"{node.name}: backbone {node.options['model']} needs 3 input channels, "
                          f"got {fmt(in_shape)}")
    facts = (shipped_backbone_facts(node.options["model"], in_shape)
             or measure_backbone(node, in_shape, ctx))
    return Inferred(pooled(node, tuple(facts["out"])), trainable=facts["params"],
                    non_trainable=facts["buffers"], macs=facts["macs"])


def build_backbone(node, in_shape, ctx):
    import torchvision

    name = node.options["model"]
    model = torchvision.models.get_model(name, weights=None)
    if node.options.get("weights", "none") == "imagenet" and ctx.load_weights:
        model.load_state_dict(imagenet_state_dict(node, name))
    return one(node, modules.Backbone(backbone_features(name, model), node.options.get("pooling", "none")))


DOWNLOAD_TIMEOUT_S = 20


def imagenet_state_dict(node, model_name):
    """torchvision's ImageNet weights from torch.hub's checkpoint folder, downloaded there
    if missing; never hangs: the download gets DOWNLOAD_TIMEOUT_S seconds."""
    import os
    import threading

    import torchvision

    weights = torchvision.models.get_model_weights(model_name).DEFAULT
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    file_name = os.path.basename(weights.url)
    path = os.path.join(folder, file_name)
    if not os.path.exists(path):
        failure = download_with_timeout(weights.url, path, threading)
        if failure:
            where = node.where
            place = f"{where.file}:{where.line}: " if where and where.file else ""
            raise DataError(f"{place}{node.name}: ImageNet weights for {model_name} are not available "
                            f"({failure}); place {file_name} in {folder} (from {weights.url})")
    return torch.load(path, map_location="cpu", weights_only=True)


def download_with_timeout(url, path, threading) -> str | None:
    """Download in a daemon thread; give up after DOWNLOAD_TIMEOUT_S. Returns why it failed."""
    import os

    outcome = {}

    def fetch():
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.hub.download_url_to_file(url, path, progress=False)  # writes a temp file, then moves
        except Exception as failure:  # noqa: BLE001 - any failure means: tell the user where to put it
            outcome["error"] = f"download failed: {str(failure).splitlines()[0] if str(failure) else type(failure).__name__}"

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    thread.join(DOWNLOAD_TIMEOUT_S)
    if thread.is_alive():
        return f"download timed out after {DOWNLOAD_TIMEOUT_S} s"
    return outcome.get("error")


# ---------------------------------------------------------------- the registry

def shape_free(node, in_shape, ctx):
    return Inferred(in_shape)


LAYERS: dict[str, LayerRule] = {
    "conv": LayerRule(shape_conv, build_conv),
    "dense": LayerRule(shape_dense, build_dense),
    "bn": LayerRule(shape_bn, build_bn),
    "max_pool": LayerRule(shape_pool, build_pool),
    "avg_pool": LayerRule(shape_pool, build_pool),
    "global_avg_pool": LayerRule(shape_global_pool, build_global_pool),
    "global_max_pool": LayerRule(shape_global_pool, build_global_pool),
    "dropout": LayerRule(shape_dropout, build_dropout),
    "spatial_dropout": LayerRule(shape_spatial_dropout, build_spatial_dropout),
    "flatten": LayerRule(shape_flatten, build_flatten),
    "activation": LayerRule(shape_activation, build_activation),
    "scale": LayerRule(shape_free, build_scale),
    "pad": LayerRule(shape_pad, build_pad),
    "random_flip": LayerRule(shape_augment, build_augment),
    "random_translation": LayerRule(shape_augment, build_augment),
    "random_crop": LayerRule(shape_augment, build_augment),
    "resize": LayerRule(shape_resize, build_resize),
    "whiten": LayerRule(shape_whiten, build_whiten),
    "residual": LayerRule(shape_residual, build_residual),
    "parallel": LayerRule(shape_parallel, build_parallel),
    "group": LayerRule(shape_group, build_group),
    "backbone": LayerRule(shape_backbone, build_backbone),
}
