"""The `backbone` layer type: a torchvision classifier's feature extractor, optionally with
ImageNet weights and a global pool. Its shapes and costs come from backbone_facts.json
(scripts/backbone_facts.py writes it) when it matches the installed torchvision, so
`cnnspec summary` need not import torch; otherwise they are measured on the meta device.
"""
from __future__ import annotations

import functools
import json
import os
from collections import OrderedDict
from pathlib import Path

from cnnspec.errors import DataError, SpecError
from cnnspec.fetch import download_with_timeout
from cnnspec.layers.geometry import error, fmt, module_attribute, need_image, nn, one, torch, torch_modules
from cnnspec.layers.pooling import modules as pooling_modules
from cnnspec.layers.registry import Inferred, LayerRule, register_layer


@functools.cache
def modules():
    """This file's nn.Modules, defined on first use so that the shape rules never import torch."""
    from torch import nn

    class Backbone(nn.Module):
        """A torchvision model's feature extractor, optionally pooled to a flat vector."""

        def __init__(self, features: nn.Module, pooling: str = "none"):
            super().__init__()
            self.features = features
            self.pool = pooling_modules()["GlobalPool"](pooling) if pooling != "none" else nn.Identity()

        def forward(self, x):
            return self.pool(self.features(x))

    return torch_modules(Backbone)


def __getattr__(name):  # `from cnnspec.layers.backbone import Backbone` defines it
    return module_attribute(modules, name, __name__)


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
        load_imagenet(node, name, model)
    return one(node, modules()["Backbone"](backbone_features(name, model), node.options["pooling"]))


IMAGENET_TIMEOUT_S = 20


def imagenet_file(model_name) -> tuple[str, str]:
    """(path, url) of torchvision's ImageNet weights for `model_name` in torch.hub's
    checkpoint folder."""
    import torch
    import torchvision

    url = torchvision.models.get_model_weights(model_name).DEFAULT.url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)), url


def placed(node) -> str:
    """'specs/x.yaml:4: ' where the backbone is written, or ''."""
    where = node.where
    return f"{where.file}:{where.line}: " if where and where.file else ""


def imagenet_state_dict(node, model_name):
    """torchvision's ImageNet weights from torch.hub's checkpoint folder, downloaded there
    if missing; never hangs: the download gets IMAGENET_TIMEOUT_S seconds. A file there
    that is not a state dict is one line naming it."""

    path, url = imagenet_file(model_name)
    if not os.path.exists(path):
        failure = download_with_timeout(url, path, IMAGENET_TIMEOUT_S)
        if failure:
            raise DataError(f"{placed(node)}{node.name}: ImageNet weights for {model_name} are not available "
                            f"({failure}); place {os.path.basename(path)} in {os.path.dirname(path)} (from {url})")
    from cnnspec.torch_files import UnsafeTorchFile, load_torch_file, refusal_words

    try:  # a file placed by hand is screened like any torch file someone handed over
        state = load_torch_file(path)
    except UnsafeTorchFile as error:
        problem = str(error)[:200]
    except Exception as error:  # noqa: BLE001 - a damaged file fails inside torch in many ways
        problem = refusal_words(error)[:160]
    else:
        if isinstance(state, dict):
            return state
        problem = f"it holds a {type(state).__name__}, not a state dict"
    raise DataError(f"{placed(node)}{node.name}: {path}: cannot be read as the ImageNet weights of "
                    f"{model_name} ({problem}); replace it with {url}")


def load_imagenet(node, model_name, model) -> None:
    """The ImageNet weights into torchvision's `model`: a file of another model (a resnet18's
    under resnet50's name) is one line naming the file and its first misfit tensor."""
    state = imagenet_state_dict(node, model_name)
    target = model.state_dict()
    misfit = next((key for key in target if key not in state or state[key].shape != target[key].shape), None)
    if misfit is not None:
        path, url = imagenet_file(model_name)
        found = f"{list(state[misfit].shape)} there" if misfit in state else "missing there"
        raise DataError(f"{placed(node)}{node.name}: {path} is not the ImageNet weights of {model_name} "
                        f"({misfit}: {found}, {list(target[misfit].shape)} here); replace it with {url}")
    model.load_state_dict({key: state[key] for key in target})


BACKBONE_OPTIONS = {
    "description": "a torchvision model without its classifier",
    "properties": {
        "model": {
            "type": "string",
            "enum": [
                "resnet18",
                "resnet34",
                "resnet50",
                "resnet101",
                "resnet152",
                "vgg11",
                "vgg13",
                "vgg16",
                "vgg19",
                "vgg11_bn",
                "vgg13_bn",
                "vgg16_bn",
                "vgg19_bn",
                "squeezenet1_0",
                "squeezenet1_1",
                "mobilenet_v2",
            ],
            "description": "the torchvision model",
        },
        "weights": {
            "type": "string",
            "enum": ["none", "imagenet"],
            "description": "none (random init) or imagenet (pretrained)",
            "default": "none",
        },
        "pooling": {
            "type": "string",
            "enum": ["none", "avg", "max"],
            "description": "pooling of the feature map: none, avg or max (global)",
            "default": "none",
        },
    },
    "required": ["model"],
    "x-shorthand": "model",
    "x-example": [{"backbone": {"model": "resnet18", "pooling": "avg"}}],
}


register_layer("backbone", LayerRule(shape_backbone, build_backbone, weighted=True), schema=BACKBONE_OPTIONS)
