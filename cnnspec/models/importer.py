"""`cnnspec import MODEL`: a readable spec for a torchvision classifier, proven equal to it.

    cnnspec import resnext50_32x4d -o specs/resnext50_32x4d.yaml

Each family has a writer that reads the built torchvision model (widths, depths, strides,
groups: the numbers torchvision's builder chose) and writes the spec a person would: the
family's block once under `blocks`, then one line per stage or block. The text is then
checked with cnnspec/models/parity.py before it is written: the same trainable parameter
count, every tensor copied across by structure, the same logits in float64 at two input sizes.
A model whose spec fails the check is refused, never written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cnnspec.errors import CnnspecError


class ImportFailure(CnnspecError):
    """A model cnnspec cannot write as a spec, or whose spec would not be the same network."""

    exit_code = 1


@dataclass
class Written:
    """A writer's result: the spec's text without the header, the sizes to check it at."""

    body: str
    sizes: tuple = (32, 56)


def reference_model(model_name: str, num_classes: int = 10):
    """torchvision's model as the spec describes it: random weights, no auxiliary heads."""
    import torchvision

    options = {"num_classes": num_classes}
    if model_name in ("googlenet", "inception_v3"):
        options.update(aux_logits=False, init_weights=True)
    return torchvision.models.get_model(model_name, weights=None, **options)


# ---------------------------------------------------------------- ResNet, ResNeXt, Wide ResNet

def resnet(model, name) -> Written:
    from torchvision.models.resnet import Bottleneck

    bottleneck = isinstance(model.layer1[0], Bottleneck)
    stages = []
    for index in range(1, 5):
        layer = getattr(model, f"layer{index}")
        first = layer[0]
        if bottleneck:
            stages.append(dict(blocks=len(layer), width=first.conv2.out_channels,
                               out=first.conv3.out_channels, stride=first.conv2.stride[0],
                               projection=first.downsample is not None))
        else:
            stages.append(dict(blocks=len(layer), out=first.conv2.out_channels,
                               stride=first.conv1.stride[0], projection=first.downsample is not None))
    stem = model.conv1.out_channels
    if bottleneck:
        groups = model.layer1[0].conv2.groups
        grouped = f", groups: {groups}" if groups > 1 else ""
        block = f"""  bottleneck:           # 1x1 down to `width`, 3x3{f' in {groups} groups' if groups > 1 else ''} (the stride), 1x1 up to `out`
    args: {{width: null, out: null, stride: 1, shortcut: identity}}
    layers:
      - residual:
          activation: relu
          shortcut: $shortcut   # projection: torchvision's downsample, a 1x1 conv + bn
          body:
            - conv: {{filters: $width, kernel: 1}}
            - bn
            - activation: relu
            - conv: {{filters: $width, stride: $stride{grouped}}}
            - bn
            - activation: relu
            - conv: {{filters: $out, kernel: 1}}
            - bn
  stage:                # the first block changes the shape, the others keep it
    args: {{blocks: null, width: null, out: null, stride: 2, shortcut: projection}}
    layers:
      - use: {{block: bottleneck, width: $width, out: $out, stride: $stride, shortcut: $shortcut}}
      - repeat:
          n: $blocks - 1
          layers: [use: {{block: bottleneck, width: $width, out: $out}}]
"""
        lines = [f"  - use: {{block: stage, blocks: {s['blocks']}, width: {s['width']}, out: {s['out']}"
                 + (f", stride: {s['stride']}" if s["stride"] != 2 else "")
                 + ("" if s["projection"] else ", shortcut: identity") + "}" for s in stages]
    else:
        block = """  basic_block:          # two 3x3 convs, the first with the stride
    args: {out: null, stride: 1, shortcut: identity}
    layers:
      - residual:
          activation: relu
          shortcut: $shortcut   # projection: torchvision's downsample, a 1x1 conv + bn
          body:
            - conv: {filters: $out, stride: $stride}
            - bn
            - activation: relu
            - conv: {filters: $out}
            - bn
  stage:                # the first block changes the shape, the others keep it
    args: {blocks: null, out: null, stride: 2, shortcut: projection}
    layers:
      - use: {block: basic_block, out: $out, stride: $stride, shortcut: $shortcut}
      - repeat:
          n: $blocks - 1
          layers: [use: {block: basic_block, out: $out}]
"""
        lines = [f"  - use: {{block: stage, blocks: {s['blocks']}, out: {s['out']}"
                 + (f", stride: {s['stride']}" if s["stride"] != 2 else "")
                 + ("" if s["projection"] else ", shortcut: identity") + "}" for s in stages]
    body = f"""defaults:
  conv: {{bias: false, padding: symmetric}}
blocks:
{block}layers:
  - conv: {{filters: {stem}, kernel: 7, stride: 2}}
  - bn
  - activation: relu
  - max_pool: {{kernel: 3, stride: 2, padding: 1}}
""" + "\n".join(lines) + """
  - global_avg_pool
  - dense: num_classes
"""
    return Written(body)


# ---------------------------------------------------------------- RegNet

def regnet(model, name) -> Written:
    stem = model.stem[0].out_channels
    stages, squeeze_ratio, group_width = [], None, None
    for stage in model.trunk_output.children():
        blocks = list(stage.children())
        first = blocks[0]
        transform = first.f
        out = transform.c[0].out_channels
        if transform.a[0].out_channels != out:
            raise ImportFailure(f"{name}: a bottleneck multiplier other than 1 is not written yet")
        group_width = out // transform.b[0].groups
        if getattr(transform, "se", None) is not None:
            squeeze_ratio = transform.se.fc1.out_channels / transform.a[0].in_channels
        stages.append(dict(blocks=len(blocks), out=out, stride=transform.b[0].stride[0]))
    squeeze_arg = ""
    squeeze_line = ""
    squeeze_block = ""
    if squeeze_ratio is not None:
        squeeze_arg = f", squeeze: \"round($in_channels * {round(squeeze_ratio, 4)})\""
        squeeze_line = "            - use: {block: squeeze_excite, squeeze: $squeeze}\n"
        squeeze_block = """  squeeze_excite:       # torchvision's SqueezeExcitation: a per-channel gate from the pooled map
    args: {squeeze: null}
    layers:
      - parallel:
          merge: multiply
          branches:
            - []
            - - global_avg_pool: {keep_dims: true}
              - conv: {filters: $squeeze, kernel: 1, bias: true, activation: relu}
              - conv: {filters: $in_channels, kernel: 1, bias: true, activation: sigmoid}
"""
    lines = []
    for s in stages:
        stride = f", stride: {s['stride']}" if s["stride"] != 2 else ""
        if s["blocks"] == 1:
            lines.append(f"  - use: {{block: bottleneck, out: {s['out']}, stride: {s['stride']}, shortcut: projection}}")
        else:
            lines.append(f"  - use: {{block: stage, blocks: {s['blocks']}, out: {s['out']}{stride}}}")
    body = f"""defaults:
  conv: {{bias: false, padding: symmetric}}
blocks:
  conv_bn:              # torchvision's Conv2dNormActivation
    args: {{filters: null, kernel: 1, stride: 1, groups: 1, act: relu}}
    layers:
      - conv: {{filters: $filters, kernel: $kernel, stride: $stride, groups: $groups}}
      - bn
      - activation: $act
{squeeze_block}  bottleneck:           # ResBottleneckBlock: 1x1, 3x3 in groups of {group_width} channels (the stride){', squeeze-excite' if squeeze_line else ''}, 1x1
    args: {{out: null, stride: 1, shortcut: identity{squeeze_arg}}}
    layers:
      - residual:
          activation: relu
          shortcut: $shortcut   # projection: torchvision's proj, a 1x1 conv + bn
          body:
            - use: {{block: conv_bn, filters: $out}}
            - use: {{block: conv_bn, filters: $out, kernel: 3, stride: $stride, groups: $out // {group_width}}}
{squeeze_line}            - use: {{block: conv_bn, filters: $out, act: identity}}
  stage:                # the first block changes the shape, the others keep it
    args: {{blocks: null, out: null, stride: 2}}
    layers:
      - use: {{block: bottleneck, out: $out, stride: $stride, shortcut: projection}}
      - repeat:
          n: $blocks - 1
          layers: [use: {{block: bottleneck, out: $out}}]
layers:
  - use: {{block: conv_bn, filters: {stem}, kernel: 3, stride: 2}}
""" + "\n".join(lines) + """
  - global_avg_pool
  - dense: num_classes
"""
    return Written(body)


# ---------------------------------------------------------------- DenseNet

def densenet(model, name) -> Written:
    features = dict(model.features.named_children())
    first_layer = next(features["denseblock1"].children())
    growth = first_layer.conv2.out_channels
    bottleneck = first_layer.conv1.out_channels // growth
    blocks = [len(list(module.children())) for key, module in features.items() if key.startswith("denseblock")]
    lines = []
    for index, count in enumerate(blocks):
        lines.append(f"  - repeat: {{n: {count}, layers: [use: dense_layer]}}")
        if index < len(blocks) - 1:
            lines.append("  - use: transition")
    body = f"""defaults:
  conv: {{bias: false, padding: symmetric}}
blocks:
  dense_layer:          # bn-relu-1x1 conv to {bottleneck} x growth, bn-relu-3x3 conv to growth; the input kept beside
    args: {{growth: {growth}}}
    layers:
      - parallel:
          branches:
            - []
            - - bn
              - activation: relu
              - conv: {{filters: $growth * {bottleneck}, kernel: 1}}
              - bn
              - activation: relu
              - conv: {{filters: $growth, kernel: 3}}
  transition:           # halve the channels and the size
    layers:
      - bn
      - activation: relu
      - conv: {{filters: $in_channels // 2, kernel: 1}}
      - avg_pool: 2
layers:
  - conv: {{filters: {features['conv0'].out_channels}, kernel: 7, stride: 2}}
  - bn
  - activation: relu
  - max_pool: {{kernel: 3, stride: 2, padding: 1}}
""" + "\n".join(lines) + """
  - bn
  - activation: relu
  - global_avg_pool
  - dense: num_classes
"""
    return Written(body)


# ---------------------------------------------------------------- ShuffleNet v2

def shufflenet(model, name) -> Written:
    widths = model._stage_out_channels
    depths = [len(getattr(model, f"stage{index}")) for index in (2, 3, 4)]
    lines = [f"  - use: {{block: stage, blocks: {depth}, out: {width}}}" for depth, width in zip(depths, widths[1:4])]
    body = f"""defaults:
  conv: {{bias: false, padding: symmetric}}
blocks:
  conv_bn:              # conv, bn, then the activation (identity after the depthwise convs)
    args: {{filters: null, kernel: 1, stride: 1, groups: 1, act: relu}}
    layers:
      - conv: {{filters: $filters, kernel: $kernel, stride: $stride, groups: $groups}}
      - bn
      - activation: $act
  unit:                 # stride 1: half the channels pass; the other half: 1x1, 3x3 depthwise, 1x1
    layers:
      - parallel:
          branches:
            - [channel_split: {{parts: 2, index: 0}}]
            - - channel_split: {{parts: 2, index: 1}}
              - use: {{block: conv_bn, filters: $in_channels // 2}}
              - use: {{block: conv_bn, filters: $in_channels // 2, kernel: 3, groups: $in_channels // 2, act: identity}}
              - use: {{block: conv_bn, filters: $in_channels // 2}}
      - channel_shuffle: 2
  down_unit:            # stride 2: both branches see the whole input, each gives half of `out`
    args: {{out: null}}
    layers:
      - parallel:
          branches:
            - - use: {{block: conv_bn, filters: $in_channels, kernel: 3, stride: 2, groups: $in_channels, act: identity}}
              - use: {{block: conv_bn, filters: $out // 2}}
            - - use: {{block: conv_bn, filters: $out // 2}}
              - use: {{block: conv_bn, filters: $out // 2, kernel: 3, stride: 2, groups: $out // 2, act: identity}}
              - use: {{block: conv_bn, filters: $out // 2}}
      - channel_shuffle: 2
  stage:
    args: {{blocks: null, out: null}}
    layers:
      - use: {{block: down_unit, out: $out}}
      - repeat: {{n: $blocks - 1, layers: [use: unit]}}
layers:
  - use: {{block: conv_bn, filters: {widths[0]}, kernel: 3, stride: 2}}
  - max_pool: {{kernel: 3, stride: 2, padding: 1}}
""" + "\n".join(lines) + f"""
  - use: {{block: conv_bn, filters: {widths[-1]}}}
  - global_avg_pool
  - dense: num_classes
"""
    return Written(body)


# ---------------------------------------------------------------- ConvNeXt

def convnext(model, name) -> Written:
    from torchvision.models.convnext import CNBlock

    stem = model.features[0][0].out_channels
    stem_eps = model.features[0][1].eps
    lines, rates = [], []
    for module in list(model.features)[1:]:
        children = list(module.children())
        if isinstance(children[0], CNBlock):
            rates += [block.stochastic_depth.p for block in children]
            lines += [f"  - use: {{block: cn_block, drop: DROP{len(rates) - len(children) + k}}}"
                      for k in range(len(children))]
        else:
            lines.append(f"  - use: {{block: downsample, out: {children[1].out_channels}}}")
    total, last = len(rates), rates[-1]
    for index, rate in enumerate(rates):  # torchvision's linear rise, written as the rule
        text = "0.0" if index == 0 else f"{last} * {index} / {total - 1}"
        if abs(eval_rate(last, index, total) - rate) > 1e-12:
            text = repr(rate)
        lines = [line.replace(f"DROP{index}}}", f"{text}}}") for line in lines]
    scale = float(f"{model.features[1][0].layer_scale.flatten()[0].item():.7g}")  # a float32 value
    body = f"""defaults:
  conv: {{padding: symmetric}}
  layer_norm: {{eps: {number(stem_eps)}}}
blocks:
  cn_block:             # 7x7 depthwise, layer norm, 1x1 to 4x wider, GELU, 1x1 back; scaled, dropped per sample
    args: {{drop: null}}
    layers:
      - residual:
          shortcut: identity
          body:
            - conv: {{filters: $in_channels, kernel: 7, groups: $in_channels}}
            - layer_norm
            - conv: {{filters: $in_channels * 4, kernel: 1}}    # torchvision: nn.Linear over the channels
            - activation: gelu
            - conv: {{filters: $in_channels, kernel: 1}}
            - layer_scale: {number(scale)}
            - drop_path: $drop
  downsample:           # layer norm, then a 2x2 stride-2 conv (no padding)
    args: {{out: null}}
    layers:
      - layer_norm
      - conv: {{filters: $out, kernel: 2, stride: 2, padding: valid}}
layers:
  - conv: {{filters: {stem}, kernel: 4, stride: 4, padding: valid}}   # patchify stem
  - layer_norm
""" + "\n".join(lines) + """
  - global_avg_pool
  - layer_norm
  - dense: num_classes
"""
    return Written(body, sizes=(32, 40))  # float64 depthwise 7x7 convs are slow on CPU


def number(value: float) -> str:
    """1e-06 as a person writes it in YAML: 1.0e-6."""
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return repr(value)
    mantissa, exponent = f"{value:.15g}".split("e") if "e" in f"{value:.15g}" else (f"{value:.15g}", "0")
    mantissa = mantissa if "." in mantissa else mantissa + ".0"
    return f"{mantissa}e{int(exponent)}"


def eval_rate(last: float, index: int, total: int) -> float:
    return 0.0 if index == 0 else last * index / (total - 1)


# ---------------------------------------------------------------- VGG

def vgg(model, name) -> Written:
    from torch import nn

    with_bn = any(isinstance(module, nn.BatchNorm2d) for module in model.features)
    stages, convs = [], 0
    for module in model.features:
        if isinstance(module, nn.Conv2d):
            convs, filters = convs + 1, module.out_channels
        elif isinstance(module, nn.MaxPool2d):
            stages.append((convs, filters))
            convs = 0
    size = model.avgpool.output_size
    size = size[0] if isinstance(size, tuple) and size[0] == size[1] else size
    hidden = model.classifier[0].out_features
    conv_layers = ("      - conv: {filters: $filters, kernel: 3}\n      - bn\n      - activation: relu\n"
                   if with_bn else "      - conv: {filters: $filters, kernel: 3, activation: relu}\n")
    lines = [f"  - use: {{block: stage, convs: {count}, filters: {filters}}}" for count, filters in stages]
    body = f"""defaults:
  conv: {{padding: symmetric}}
blocks:
  conv3:                # 3x3 conv{', batch norm' if with_bn else ''}, relu
    args: {{filters: null}}
    layers:
{conv_layers}  stage:                # `convs` 3x3 convs, then halve the size
    args: {{convs: null, filters: null}}
    layers:
      - repeat: {{n: $convs, layers: [use: {{block: conv3, filters: $filters}}]}}
      - max_pool: 2
layers:
""" + "\n".join(lines) + f"""
  - adaptive_avg_pool: {size}             # {size}x{size} at any input size (a smaller map is repeated)
  - flatten
  - dense: {{units: {hidden}, activation: relu}}
  - dropout: 0.5
  - dense: {{units: {hidden}, activation: relu}}
  - dropout: 0.5
  - dense: num_classes
"""
    return Written(body)


# ---------------------------------------------------------------- SqueezeNet, AlexNet, GoogLeNet

def pool_line(pool, indent="  ") -> str:
    """A torch MaxPool2d as a max_pool layer."""
    kernel, stride, padding = (value if isinstance(value, int) else value[0]
                               for value in (pool.kernel_size, pool.stride, pool.padding))
    options = [f"kernel: {kernel}"] + ([f"stride: {stride}"] if stride != kernel else []) \
        + ([f"padding: {padding}"] if padding else []) + (["ceil_mode: true"] if pool.ceil_mode else [])
    return f"{indent}- max_pool: {{{', '.join(options)}}}"


def conv_options(conv, filters=None) -> str:
    """A torch Conv2d's options that differ from the defaults the writers set (padding: symmetric)."""
    kernel, stride, padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    options = [f"filters: {filters if filters is not None else conv.out_channels}", f"kernel: {kernel}"]
    options += [f"stride: {stride}"] if stride != 1 else []
    if padding != (kernel - 1) // 2:
        options.append("padding: valid" if padding == 0 else f"padding: {padding}")
    return ", ".join(options)


def feature_lines(features) -> list[str]:
    """A plain `features` stack (AlexNet's, SqueezeNet's) as layer lines: its convolutions,
    max pools and Fire blocks; its ReLUs are the convs' activation in the writer's defaults."""
    from torch import nn
    from torchvision.models.squeezenet import Fire

    lines = []
    for module in features:
        if isinstance(module, nn.Conv2d):
            lines.append(f"  - conv: {{{conv_options(module)}}}")
        elif isinstance(module, nn.MaxPool2d):
            lines.append(pool_line(module))
        elif isinstance(module, Fire):
            lines.append(f"  - use: {{block: fire, squeeze: {module.squeeze.out_channels}, "
                         f"expand: {module.expand1x1.out_channels}}}")
    return lines


def squeezenet(model, name) -> Written:
    lines = feature_lines(model.features)
    body = """defaults:
  conv: {activation: relu, padding: symmetric}
blocks:
  fire:                 # squeeze 1x1, then 1x1 and 3x3 expansions side by side
    args: {squeeze: null, expand: null}
    layers:
      - conv: {filters: $squeeze, kernel: 1}
      - parallel:
          branches:
            - [conv: {filters: $expand, kernel: 1}]
            - [conv: {filters: $expand, kernel: 3}]
layers:
""" + "\n".join(lines) + """
  - dropout: 0.5
  - conv: {filters: num_classes, kernel: 1}            # a relu too, as torchvision's classifier
  - global_avg_pool
"""
    return Written(body)


def alexnet(model, name) -> Written:
    lines = feature_lines(model.features)
    size = model.avgpool.output_size
    size = size[0] if isinstance(size, tuple) else size
    hidden = model.classifier[1].out_features
    body = """defaults:
  conv: {activation: relu, padding: symmetric}
layers:
""" + "\n".join(lines) + f"""
  - adaptive_avg_pool: {size}             # {size}x{size} at any input size (a smaller map is repeated)
  - flatten
  - dropout: 0.5
  - dense: {{units: {hidden}, activation: relu}}
  - dropout: 0.5
  - dense: {{units: {hidden}, activation: relu}}
  - dense: num_classes
"""
    return Written(body, sizes=(64, 96))  # the 11x11 stride-4 stem and three pools need 63 pixels


def googlenet(model, name) -> Written:
    from torch import nn
    from torchvision.models.googlenet import BasicConv2d, Inception

    eps = model.conv1.bn.eps
    lines = []
    for module in model.children():
        if isinstance(module, BasicConv2d):
            lines.append(f"  - use: {{block: conv_bn, {conv_options(module.conv)}}}")
        elif isinstance(module, nn.MaxPool2d):
            lines.append(pool_line(module))
        elif isinstance(module, Inception):
            widths = dict(c1=module.branch1.conv.out_channels,
                          c3_reduce=module.branch2[0].conv.out_channels, c3=module.branch2[1].conv.out_channels,
                          c5_reduce=module.branch3[0].conv.out_channels, c5=module.branch3[1].conv.out_channels,
                          pool=module.branch4[1].conv.out_channels)
            lines.append("  - use: {block: inception, " + ", ".join(f"{k}: {v}" for k, v in widths.items()) + "}")
        elif isinstance(module, nn.Dropout):
            lines.append("  - global_avg_pool")
            lines.append(f"  - dropout: {module.p}")
    first = next(module for module in model.children() if isinstance(module, Inception))
    branch_pool = pool_line(first.branch4[0], indent="              ")
    body = f"""defaults:
  conv: {{bias: false, padding: symmetric}}
  bn: {{eps: {eps}}}
blocks:
  conv_bn:              # torchvision's BasicConv2d: conv, bn, relu
    args: {{filters: null, kernel: 1, stride: 1}}
    layers:
      - conv: {{filters: $filters, kernel: $kernel, stride: $stride}}
      - bn
      - activation: relu
  inception:            # 1x1 | 1x1, 3x3 | 1x1, 3x3 (torchvision's "5x5" branch) | 3x3 max pool, 1x1
    args: {{c1: null, c3_reduce: null, c3: null, c5_reduce: null, c5: null, pool: null}}
    layers:
      - parallel:
          branches:
            - [use: {{block: conv_bn, filters: $c1}}]
            - - use: {{block: conv_bn, filters: $c3_reduce}}
              - use: {{block: conv_bn, filters: $c3, kernel: 3}}
            - - use: {{block: conv_bn, filters: $c5_reduce}}
              - use: {{block: conv_bn, filters: $c5, kernel: 3}}
            - {branch_pool.strip()}
              - use: {{block: conv_bn, filters: $pool}}
layers:
""" + "\n".join(lines) + """
  - dense: num_classes
"""
    return Written(body)


# ---------------------------------------------------------------- the families

FAMILIES = [
    (("resnet", "resnext", "wide_resnet"), resnet),
    (("regnet_",), regnet),
    (("densenet",), densenet),
    (("shufflenet_v2_",), shufflenet),
    (("convnext_",), convnext),
    (("vgg",), vgg),
    (("squeezenet",), squeezenet),
    (("alexnet",), alexnet),
    (("googlenet",), googlenet),
]


def writer_for(model_name: str):
    for prefixes, writer in FAMILIES:
        if model_name.startswith(prefixes):
            return writer
    return None


def importable() -> list[str]:
    import torchvision

    return [name for name in torchvision.models.list_models(module=torchvision.models) if writer_for(name)]


def header(model_name: str, sizes) -> str:
    from importlib.metadata import version

    import torchvision

    default = torchvision.models.get_model_weights(model_name).DEFAULT
    shown = " and ".join(f"{size}x{size}" for size in sizes)
    return f"""# torchvision's {model_name}, written by `cnnspec import {model_name}` (torchvision {version('torchvision')}).
# The same parameters in the same order as torchvision.models.{model_name}(): ImageNet weights
# copy in by structure (params.yaml: model.weights: {type(default).__name__}.{default.name};
# docs/finetune.md) and torchvision's weights give the same logits (checked in float64 at {shown}).
name: {model_name}
description: torchvision's {model_name}
input: {{channels: 3, height: 224, width: 224}}
"""


SHIPPED_SPECS = Path(__file__).resolve().parents[2] / "specs"


def shipped_note(model_name: str) -> str:
    """' (specs/mobilenet_v2.yaml ships it, ...)' where this checkout has a spec of that model
    written by hand, else ''."""
    if not (SHIPPED_SPECS / f"{model_name}.yaml").is_file():
        return ""
    return (f" (specs/{model_name}.yaml ships it, equal to torchvision's: copy that file, and "
            f"model.weights loads torchvision's weights into it)")


def checked_writer(model_name: str):
    """The family writer of `model_name`; ImportFailure naming the importable ones if none."""
    import torchvision

    writer = writer_for(model_name)
    known = torchvision.models.list_models(module=torchvision.models)
    if writer is None or model_name not in known:
        from cnnspec.spec.schema_errors import did_you_mean

        what = "not a torchvision classification model" if model_name not in known else \
            "a family cnnspec cannot write yet" + shipped_note(model_name)
        hint = did_you_mean(model_name, importable()) if model_name not in known else ""  # a typo
        raise ImportFailure(f"import {model_name}: {what}{hint}; importable: {', '.join(importable())}")
    return writer


def spec_text(model_name: str, num_classes: int = 10, reference=None) -> tuple[str, tuple]:
    """The spec of torchvision model `model_name` and the sizes it is to be checked at
    (read from `reference`, the built model, when given)."""
    writer = checked_writer(model_name)
    written = writer(reference if reference is not None else reference_model(model_name, num_classes), model_name)
    return header(model_name, written.sizes) + written.body, written.sizes


def import_model(model_name: str, num_classes: int = 10):
    """(spec text, Parity) for `model_name`; ImportFailure if the spec is not the same network."""
    from cnnspec.models.parity import check_parity
    from cnnspec.spec.reader import parse_spec

    checked_writer(model_name)
    reference = reference_model(model_name, num_classes)
    text, sizes = spec_text(model_name, num_classes, reference)
    spec = parse_spec(text, f"<{model_name}>")
    parity = check_parity(spec, reference, sizes, num_classes)
    if parity.problems:
        raise ImportFailure(f"import {model_name}: the written spec is not torchvision's network: "
                            + "; ".join(parity.problems))
    return text, parity
