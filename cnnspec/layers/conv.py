"""The `conv` layer type (2-d convolution, input channels inferred; TensorFlow's "same"
padding with the extra pixel at the end, or PyTorch's symmetric), and the weight
initialisations it and `dense` share.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cnnspec.layers.activations import with_activation
from cnnspec.layers.geometry import (
    count,
    error,
    fmt,
    need_image,
    nn,
    pair,
    spatial,
    symmetric,
    torch,
    warn_even_symmetric,
)
from cnnspec.layers.registry import Inferred, LayerRule, register_layer, registry_drift
from cnnspec.layers.schema_base import pixel_sizes

if TYPE_CHECKING:
    from cnnspec.spec.nodes import LayerNode


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
    warn_even_symmetric(node, kernel, ctx)
    if node.options["padding"] == "same" and not symmetric(pads):
        ctx.warn(node, f"{node.name}: padding same with stride {fmt(stride)} on {fmt(in_shape)} pads "
                       f"{pads[0]}/{pads[1]} rows and {pads[2]}/{pads[3]} columns before/after (TensorFlow's "
                       f"convention, as a Keras port needs); a PyTorch model pads both sides alike: write "
                       f"padding: symmetric when porting one", "padding")
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


# The options conv and dense share: the activation applied after the layer, and the
# weight initialisation (one of INITS).
ACTIVATION_OPTION = {"$ref": "#/$defs/activation_name", "description": "activation applied after the layer",
                     "default": "identity"}
INIT_OPTION = {"type": "string", "enum": list(INITS), "description": "weight initialisation (default: torch's)",
               "default": "default"}

CONV_OPTIONS = {
    "description": "2-d convolution; input channels are inferred",
    "properties": {
        "filters": {
            "type": ["integer", "string"],
            "minimum": 1,
            "maximum": 1000000,
            "pattern": "^num_classes$",
            "x-hint": "an integer >= 1 or num_classes",
            "description": "output channels (or num_classes)",
        },
        "kernel": pixel_sizes("kernel size: an integer or [h, w]", default=3),
        "stride": pixel_sizes("stride: an integer or [h, w]", default=1),
        "padding": {
            "type": ["string", "integer", "array"],
            "pattern": "^(same|valid|symmetric)$",
            "minimum": 0,
            "maximum": 4096,
            "items": {"type": "integer", "minimum": 0, "maximum": 4096},
            "minItems": 2,
            "maxItems": 2,
            "default": "same",
            "x-hint": "same, valid, symmetric, an integer >= 0 or [h, w]",
            "description": "same (TensorFlow/Keras: output size = input size / stride, an odd extra pixel at the end), symmetric (PyTorch/torchvision: dilation * (kernel - 1) // 2 on every side), valid (none), or pixels: an integer or [h, w]",
        },
        "dilation": pixel_sizes("spacing between kernel taps", default=1),
        "groups": {
            "type": "integer",
            "minimum": 1,
            "description": "blocked connections from input to output channels (both must divide by it)",
            "maximum": 1000000,
            "default": 1,
        },
        "bias": {
            "type": "boolean",
            "default": True,
            "description": "learn an additive bias per output channel",
        },
        "activation": dict(ACTIVATION_OPTION),
        "init": dict(INIT_OPTION, enum=list(INITS)),
    },
    "required": ["filters"],
    "x-shorthand": "filters",
    "x-example": [
        {"conv": {"filters": 4, "stride": 2, "activation": "relu"}},
        {
            "conv": {
                "filters": 4,
                "kernel": 5,
                "stride": 2,
                "padding": "symmetric",
                "activation": "hardswish",
            },
        },
    ],
}


register_layer("conv", LayerRule(shape_conv, build_conv, weighted=True, softmax_option="activation"), schema=CONV_OPTIONS)
