"""The layer registry: for every layer type of the spec language, one LayerRule.

    LAYERS["conv"].shape(node, in_shape, ctx) -> Inferred(out_shape, trainable, non_trainable, macs)
    LAYERS["conv"].build(node, in_shape, ctx) -> [(module_name, nn.Module), ...]

A rule also carries the facts the rest of cnnspec asks about a type (does it take
l2 / lr_mult / wd_mult, which options hold child layer lists, which option may end
the model in a softmax). A layer type is one LayerRule, in BUILT_IN_LAYERS at the end of
this file or passed to `register_layer`, plus its entry in schema.json;
tests/test_registry.py checks the two agree.

Shapes are tuples without the batch: (C, H, W) or (F,). A shape rule raises SpecError
naming the layer, its line and the shapes when the spec cannot work, and counts the layer's
own parameters and multiply-accumulates analytically, so `cnnspec summary` never imports
torch (about 2-4 s here) unless the spec holds a backbone. Options arrive complete: the
front end (spec.py) has filled in every default the schema declares.

A builder returns the layer's modules as (name, module) pairs, nearly always one pair
named after the layer, so state_dict keys read `layers.conv_1.weight`. A conv with an
activation adds a sibling `conv_1_relu`; an asymmetric "same" padding adds `conv_1_pad`.

Shape rules get the inference context of shapes.py (`ctx.infer_list`, `ctx.num_classes`);
builders get the compiler's (`ctx.build_list`, `ctx.out_shape`, `ctx.num_classes`).
"""
from __future__ import annotations

import importlib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cnnspec.errors import SpecError
from cnnspec.spec.nodes import LayerNode


class LazyModule:
    """Imports a module on first attribute access: the shape rules never touch torch."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute):
        return getattr(importlib.import_module(self._name), attribute)


torch = LazyModule("torch")
nn = LazyModule("torch.nn")
modules = LazyModule("cnnspec.layers.modules")


# ---------------------------------------------------------------- the registry

@dataclass
class Inferred:
    """What a shape rule returns: the output shape and the layer's own costs."""

    out_shape: tuple
    trainable: int = 0
    non_trainable: int = 0
    macs: int = 0
    parts: list = field(default_factory=list)  # (label, shape, params) of modules with no layer of their own


@dataclass(frozen=True)
class LayerRule:
    """Everything cnnspec knows about one layer type besides its schema entry."""

    shape: Callable[..., Inferred]  # (node, in_shape, ctx) -> Inferred
    build: Callable[..., list]      # (node, in_shape, ctx) -> [(name, nn.Module), ...]
    weighted: bool = False          # takes l2 / lr_mult / wd_mult (schema: allOf weighted_options)
    child_lists: tuple = ()         # options holding a layer list: expanded into node.children[key]
    branch_lists: str | None = None  # the option holding a list of layer lists: children branch_0, ...
    softmax_option: str | None = None  # the option whose softmax, on the model's last layer, the loss takes over
    written: bool = True            # False for a type only the front end makes (group: an expanded `use`)


LAYERS: dict[str, LayerRule] = {}


def register_layer(layer_type: str, rule: LayerRule, schema: dict | None = None) -> LayerRule:
    """Add a layer type to the registry. A built-in type's options are in schema.json's
    $defs under the same name; a type from user code passes them as `schema`, a JSON
    Schema fragment: {"description", "properties", "required", "x-shorthand", "x-example"}
    (docs/spec.md, "Custom layer types")."""
    if layer_type in LAYERS:
        raise ValueError(f"layer type {layer_type!r} is already registered")
    if schema is not None:
        import sys

        reader = sys.modules.get("cnnspec.spec.reader")
        if reader is not None and not hasattr(reader, "add_layer_schema"):
            SCHEMAS_WAITING.append((layer_type, schema, rule))  # the front end is importing us
        else:
            from cnnspec.spec.reader import add_layer_schema

            add_layer_schema(layer_type, schema, rule)
    LAYERS[layer_type] = rule
    return rule


# (type, schema, rule) of types registered while the front end was being imported:
# it adds their schemas once it is complete (the end of cnnspec/spec/reader.py).
SCHEMAS_WAITING: list = []


def rule_for(node: LayerNode) -> LayerRule:
    if node.type not in LAYERS:  # the schema let through a type the registry lacks
        raise RuntimeError(f"cnnspec bug: layer type {node.type!r} ({node.path}) is in schema.json "
                           f"but not in the layer registry")
    return LAYERS[node.type]


def registry_drift(node: LayerNode, option: str, table: dict) -> RuntimeError:
    value = node.options[option]
    return RuntimeError(f"cnnspec bug: {node.path}.{option}: {value!r} passed schema.json but has "
                        f"no entry in the registry (known: {', '.join(table)})")


# ---------------------------------------------------------------- small helpers

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


def spatial(node, in_shape, kernel, stride, padding, dilation=(1, 1)):
    """Output (H, W) and the (top, bottom, left, right) padding of a conv or pool window."""
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
        sizes.append((size + total - span) // s + 1)
    return tuple(sizes), pads


def symmetric(pads) -> bool:
    return pads[0] == pads[1] and pads[2] == pads[3]


# ---------------------------------------------------------------- activations

# Options of the layer that applies the activation: an `activation` layer has alpha and
# negative_slope; a conv, dense or residual with `activation: elu` gets torch's defaults.
ACTIVATIONS = {
    "relu": lambda o: nn.ReLU(),
    "relu6": lambda o: nn.ReLU6(),
    "gelu": lambda o: nn.GELU(),
    "elu": lambda o: nn.ELU(alpha=o.get("alpha", 1.0)),
    "celu": lambda o: nn.CELU(alpha=o.get("alpha", 1.0)),
    "silu": lambda o: nn.SiLU(),
    "mish": lambda o: nn.Mish(),
    "hardswish": lambda o: nn.Hardswish(),
    "hardsigmoid": lambda o: nn.Hardsigmoid(),
    "leaky_relu": lambda o: nn.LeakyReLU(negative_slope=o.get("negative_slope", 0.01)),
    "tanh": lambda o: nn.Tanh(),
    "sigmoid": lambda o: nn.Sigmoid(),
    "softmax": lambda o: nn.Softmax(dim=1),
    "identity": lambda o: nn.Identity(),
}


def activation_of(node: LayerNode, ctx, option: str = "activation") -> str:
    """The activation a layer applies; a final softmax is folded into the loss instead."""
    fn = node.options[option]
    if fn not in ACTIVATIONS:
        raise registry_drift(node, option, ACTIVATIONS)
    return "identity" if node is ctx.softmax_node else fn


def with_activation(node: LayerNode, ctx, pairs: list) -> list:
    fn = activation_of(node, ctx)
    if fn != "identity":
        pairs.append((f"{node.name}_{fn}", ACTIVATIONS[fn](node.options)))
    return pairs


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
    name = node.options["init"]
    if name not in INITS:
        raise registry_drift(node, "init", INITS)
    if INITS[name] is not None:
        with torch.no_grad():
            INITS[name](module.weight)
            if module.bias is not None:
                module.bias.zero_()


# ---------------------------------------------------------------- conv, dense, bn

def conv_geometry(node, in_shape, ctx):
    need_image(node, in_shape)
    o = node.options
    kernel, stride, dilation = pair(o["kernel"]), pair(o["stride"]), pair(o["dilation"])
    (height, width), pads = spatial(node, in_shape, kernel, stride, o["padding"], dilation)
    filters, groups = count(node, "filters", ctx), o["groups"]
    if in_shape[0] % groups or filters % groups:
        raise error(node, f"{node.name}: groups {groups} must divide the input channels "
                          f"{in_shape[0]} and the filters {filters}", "groups")
    return kernel, stride, dilation, pads, filters, groups, (filters, height, width)


def shape_conv(node, in_shape, ctx):
    kernel, stride, _, pads, filters, groups, out = conv_geometry(node, in_shape, ctx)
    if node.options["padding"] == "same" and not symmetric(pads):
        ctx.warn(node, f"{node.name}: padding same with stride {fmt(stride)} on {fmt(in_shape)} pads "
                       f"{pads[0]}/{pads[1]} rows and {pads[2]}/{pads[3]} columns before/after (TensorFlow's "
                       f"convention); a PyTorch model pads both sides alike: write padding: symmetric "
                       f"when porting one", "padding")
    per_output = in_shape[0] // groups * kernel[0] * kernel[1]
    bias = filters if node.options["bias"] else 0
    return Inferred(out, trainable=filters * per_output + bias,
                    macs=out[0] * out[1] * out[2] * per_output)


def build_conv(node, in_shape, ctx):
    kernel, stride, dilation, pads, filters, groups, _ = conv_geometry(node, in_shape, ctx)
    pairs = []
    if not symmetric(pads):  # TensorFlow's "same" with a stride: pad the extra pixel at the end
        pairs.append((f"{node.name}_pad", nn.ZeroPad2d((pads[2], pads[3], pads[0], pads[1]))))
        pads = (0, 0, 0, 0)
    conv = nn.Conv2d(in_shape[0], filters, kernel, stride=stride, padding=(pads[0], pads[2]),
                     dilation=dilation, groups=groups, bias=node.options["bias"])
    initialise(node, conv)
    pairs.append((node.name, conv))
    return with_activation(node, ctx, pairs)


def shape_dense(node, in_shape, ctx):
    if len(in_shape) != 1:
        raise error(node, f"{node.name}: input {fmt(in_shape)} is not flat; add a flatten or "
                          f"global_avg_pool layer before this dense layer")
    units = count(node, "units", ctx)
    bias = units if node.options["bias"] else 0
    return Inferred((units,), trainable=in_shape[0] * units + bias, macs=in_shape[0] * units)


def build_dense(node, in_shape, ctx):
    dense = nn.Linear(in_shape[0], count(node, "units", ctx), bias=node.options["bias"])
    initialise(node, dense)
    return with_activation(node, ctx, [(node.name, dense)])


KERAS_MOMENTUM = 0.5  # above it, a momentum is most likely Keras' (1 - PyTorch's)


def shape_bn(node, in_shape, ctx):
    if len(in_shape) not in (1, 3):
        raise error(node, f"{node.name}: batch norm needs a flat or image input, got {fmt(in_shape)}")
    momentum = node.options["momentum"]
    if momentum > KERAS_MOMENTUM:
        ctx.warn(node, f"{node.name}: momentum {momentum} is the weight of each new batch here "
                       f"(PyTorch's convention); Keras' momentum {momentum} is "
                       f"{round(1 - momentum, 6)} here", "momentum")
    channels = in_shape[0]
    if not node.options["affine"]:
        return Inferred(in_shape, non_trainable=2 * channels)  # moving mean and variance only
    frozen_weight = not node.options["weight_trainable"]
    return Inferred(in_shape, trainable=channels * (1 if frozen_weight else 2),
                    non_trainable=2 * channels + (channels if frozen_weight else 0))


def build_bn(node, in_shape, ctx):
    norm = nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d
    o = node.options
    bn = norm(in_shape[0], eps=o["eps"], momentum=o["momentum"], affine=o["affine"])
    if bn.affine and not o["weight_trainable"]:
        bn.weight.requires_grad_(False)  # gamma stays at 1 (airbench)
    return one(node, bn)


# ---------------------------------------------------------------- pooling, reshaping

def pool_geometry(node, in_shape):
    need_image(node, in_shape)
    o = node.options
    kernel = pair(o["kernel"])
    stride = pair(o["stride"])
    padding = o["padding"]
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
            nn.AvgPool2d(kernel, stride, padding, count_include_pad=node.options["padding"] != "same"))
    pairs.append((node.name, pool))
    return pairs


def shape_global_pool(node, in_shape, ctx):
    need_image(node, in_shape)
    if node.options["over"] == "channels":
        return Inferred((1, *in_shape[1:]))
    return Inferred((in_shape[0], 1, 1) if node.options["keep_dims"] else (in_shape[0],))


def build_global_pool(node, in_shape, ctx):
    return one(node, modules.GlobalPool("max" if node.type == "global_max_pool" else "avg",
                                        keep_dims=node.options["keep_dims"], over=node.options["over"]))


def shape_flatten(node, in_shape, ctx):
    return Inferred((math.prod(in_shape),))


def build_flatten(node, in_shape, ctx):
    return one(node, nn.Flatten())


def build_identity(node, in_shape, ctx):
    return one(node, nn.Identity())


def build_dropout(node, in_shape, ctx):
    return one(node, nn.Dropout(node.options["rate"]))


def shape_image_free(node, in_shape, ctx):
    """Any image input passes through unchanged."""
    need_image(node, in_shape)
    return Inferred(in_shape)


def build_spatial_dropout(node, in_shape, ctx):
    return one(node, nn.Dropout2d(node.options["rate"]))


def build_scale(node, in_shape, ctx):
    return one(node, modules.Scale(float(node.options["factor"])))


def pad_sizes(node):
    padding = node.options["padding"]
    return (padding,) * 4 if isinstance(padding, int) else tuple(padding)  # top, bottom, left, right


def shape_pad(node, in_shape, ctx):
    need_image(node, in_shape)
    top, bottom, left, right = pad_sizes(node)
    if node.options["mode"] == "reflect" and max(top, bottom) >= in_shape[1] or \
            node.options["mode"] == "reflect" and max(left, right) >= in_shape[2]:
        raise error(node, f"{node.name}: reflect padding {max(top, bottom, left, right)} needs an "
                          f"input larger than it, got {fmt(in_shape)}", "padding")
    return Inferred((in_shape[0], in_shape[1] + top + bottom, in_shape[2] + left + right))


PADS = {"zeros": lambda p: nn.ZeroPad2d(p), "reflect": lambda p: nn.ReflectionPad2d(p),
        "replicate": lambda p: nn.ReplicationPad2d(p)}


def build_pad(node, in_shape, ctx):
    top, bottom, left, right = pad_sizes(node)
    return one(node, PADS[node.options["mode"]]((left, right, top, bottom)))


# ---------------------------------------------------------------- augmentation and resizing

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


def translation_pixels(node, in_shape) -> tuple[int, int]:
    height = node.options["height"]
    width = node.options["width"]
    return round(height * in_shape[1]), round(width * in_shape[2])


AUGMENTS = {
    "random_flip": lambda node, in_shape: modules.RandomFlip(node.options["mode"]),
    "random_translation": lambda node, in_shape: modules.RandomTranslation(
        *translation_pixels(node, in_shape), fill=node.options["fill"]),
    "random_crop": lambda node, in_shape: modules.RandomCrop(
        node.options["padding"], mode=node.options["mode"]),
}


def build_augment(node, in_shape, ctx):
    return one(node, AUGMENTS[node.type](node, in_shape))


def resize_to(node):
    return node.options["height"], node.options["width"]


def shape_resize(node, in_shape, ctx):
    need_image(node, in_shape)
    return Inferred((in_shape[0], *resize_to(node)))


def build_resize(node, in_shape, ctx):
    return one(node, modules.Resize(resize_to(node), node.options["mode"]))


# ---------------------------------------------------------------- whitening conv (airbench)

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
    return one(node, modules.WhiteningConv(in_shape[0], kernel, eps=node.options["eps"],
                                           bias=node.options["bias"],
                                           bias_epochs=node.options.get("bias_epochs")))


# ---------------------------------------------------------------- composites

def shape_group(node, in_shape, ctx):
    return Inferred(ctx.infer_list(node.children["layers"], in_shape))


def build_group(node, in_shape, ctx):
    return one(node, ctx.build_list(node.children["layers"]))


def shortcut_kind(node, source, body_out):
    if "shortcut" in node.children:
        return "layers"
    kind = node.options["shortcut"]
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
    source = pre_out if node.options["shortcut_from"] == "pre" else in_shape
    return pre_out, body_out, source


def shape_residual(node, in_shape, ctx):
    _, body_out, source = residual_shapes(node, in_shape, ctx)
    kind = shortcut_kind(node, source, body_out)
    own = Inferred(body_out)
    if kind == "layers":
        short_out = ctx.infer_list(node.children["shortcut"], source)
    elif kind == "identity":
        short_out = source
    elif kind == "pool":
        stride = shortcut_stride(node, source, body_out)
        short_out = (source[0], *(-(-s // k) for s, k in zip(source[1:], stride)))
    else:  # projection: the schema allows no other kind
        shortcut_stride(node, source, body_out)
        short_out = body_out
        own.trainable = source[0] * body_out[0] + 2 * body_out[0]
        own.non_trainable = 2 * body_out[0]
        own.macs = math.prod(body_out) * source[0]
        if node.options["shortcut"] == "auto":
            ctx.warn(node, f"{node.name}: shortcut auto adds a projection (1x1 conv + bn, "
                           f"{own.trainable + own.non_trainable:,} params) because the body turns "
                           f"{fmt(source)} into {fmt(body_out)}; write shortcut: projection if "
                           f"that is meant", "shortcut")
    if kind in ("projection", "pool") and "shortcut" not in node.children:
        own.parts = [(f"shortcut ({kind})", short_out, own.trainable + own.non_trainable)]
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
        shortcut_from_pre=node.options["shortcut_from"] == "pre",
        activation=ACTIVATIONS[fn](node.options)))


def residual_shapes_recorded(node, in_shape, ctx):
    """The shapes the inference pass recorded (no second walk, no duplicate records)."""
    pre = node.children.get("pre", [])
    pre_out = ctx.out_shape(pre[-1]) if pre else in_shape
    body_out = ctx.out_shape(node)
    source = pre_out if node.options["shortcut_from"] == "pre" else in_shape
    return pre_out, body_out, source


def branches(node) -> list[list[LayerNode]]:
    return [node.children[key] for key in sorted(node.children, key=lambda k: int(k.split("_")[1]))
            if key.startswith("branch_")]


def broadcast(shapes: list[tuple]) -> tuple | None:
    """The shape an elementwise merge of `shapes` gives: same rank, each size equal or 1
    (no implicit new axes: a flat (C,) against (C, H, W) would meet W, not C). None if not."""
    if len({len(shape) for shape in shapes}) > 1:
        return None
    merged = []
    for sizes in zip(*shapes):
        wanted = {size for size in sizes if size != 1} or {1}
        if len(wanted) > 1:
            return None
        merged.append(wanted.pop())
    return tuple(merged)


ELEMENTWISE_MERGES = ("add", "multiply")


def shape_parallel(node, in_shape, ctx):
    outs = [ctx.infer_list(branch, in_shape) for branch in branches(node)]
    if len(outs) < 2:
        raise error(node, f"{node.name}: parallel needs at least 2 branches, got {len(outs)}", "branches")
    merge = node.options["merge"]
    shown = " and ".join(fmt(out) for out in outs)
    if merge in ELEMENTWISE_MERGES:
        merged = broadcast(outs)
        if merged is None:
            hint = "; a global pool with keep_dims: true gives a Cx1x1 gate" \
                if any(len(out) == 1 for out in outs) and any(len(out) == 3 for out in outs) else ""
            raise error(node, f"{node.name}: cannot {merge} branches of shapes {shown}: "
                              f"each size must be equal or 1{hint}", "merge")
        return Inferred(merged)
    if len({(len(out), *out[1:]) for out in outs}) > 1:
        raise error(node, f"{node.name}: cannot concatenate branches of shapes {shown} on channels",
                    "merge")
    return Inferred((sum(out[0] for out in outs), *outs[0][1:]))


def build_parallel(node, in_shape, ctx):
    return one(node, modules.Parallel([ctx.build_list(branch) for branch in branches(node)],
                                      merge=node.options["merge"]))


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
    return (out[0],) if node.options["pooling"] != "none" else out


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
    if node.options["weights"] == "imagenet" and ctx.load_weights:
        from cnnspec.data.download import imagenet_state_dict

        model.load_state_dict(imagenet_state_dict(node, name))
    return one(node, modules.Backbone(backbone_features(name, model), node.options["pooling"]))


# ---------------------------------------------------------------- the built-in layer types

def shape_free(node, in_shape, ctx):
    return Inferred(in_shape)


BUILT_IN_LAYERS = {
    "conv": LayerRule(shape_conv, build_conv, weighted=True, softmax_option="activation"),
    "dense": LayerRule(shape_dense, build_dense, weighted=True, softmax_option="activation"),
    "bn": LayerRule(shape_bn, build_bn, weighted=True),
    "max_pool": LayerRule(shape_pool, build_pool),
    "avg_pool": LayerRule(shape_pool, build_pool),
    "global_avg_pool": LayerRule(shape_global_pool, build_global_pool),
    "global_max_pool": LayerRule(shape_global_pool, build_global_pool),
    "dropout": LayerRule(shape_free, build_dropout),
    "spatial_dropout": LayerRule(shape_image_free, build_spatial_dropout),
    "flatten": LayerRule(shape_flatten, build_flatten),
    "identity": LayerRule(shape_free, build_identity),
    "activation": LayerRule(shape_free, build_activation, softmax_option="fn"),
    "scale": LayerRule(shape_free, build_scale),
    "pad": LayerRule(shape_pad, build_pad),
    "random_flip": LayerRule(shape_augment, build_augment),
    "random_translation": LayerRule(shape_augment, build_augment),
    "random_crop": LayerRule(shape_augment, build_augment),
    "resize": LayerRule(shape_resize, build_resize),
    "whiten": LayerRule(shape_whiten, build_whiten, weighted=True),
    "residual": LayerRule(shape_residual, build_residual, child_lists=("pre", "body", "shortcut")),
    "parallel": LayerRule(shape_parallel, build_parallel, branch_lists="branches"),
    "group": LayerRule(shape_group, build_group, child_lists=("layers",), written=False),
    "backbone": LayerRule(shape_backbone, build_backbone, weighted=True),
}
for layer_type, rule in BUILT_IN_LAYERS.items():
    register_layer(layer_type, rule)

# Layer types that live in their own files (each registers itself, schema included).
from cnnspec.layers import adaptive_pool, channel_norm, channels, residual_branch  # noqa: E402,F401
