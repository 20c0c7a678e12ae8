"""Compile a spec into a plain nn.Module.

    model = build_model("specs/simcnn.yaml", input_shape=(3, 32, 32), num_classes=10)

Shape inference (shapes.py) runs over the whole layer tree first, so every shape error
is raised before anything is built; then a `Builder` asks each layer's rule (layers.py)
for its modules, which go, named by layer, into one nn.Sequential:
`model.layers.conv_1.weight`.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnspec.layers.geometry import error
from cnnspec.layers.registry import rule_for
from cnnspec.layers.whiten import WhiteningConv
from cnnspec.models.shapes import ONE_SPEC_WALK_AT_A_TIME, Context, activation_bytes, as_spec, infer, resolve_input
from cnnspec.spec.nodes import LayerNode, walk

# l2 / lr_mult / wd_mult of a parameter no weighted layer set (a pool, a residual's projection)
DEFAULT_PARAM_OPTIONS = {"l2": 0.0, "lr_mult": 1.0, "wd_mult": 1.0}


def final_softmax(nodes: list[LayerNode]) -> LayerNode | None:
    """The last layer when it ends in softmax (Keras style): folded into the loss."""
    while nodes:
        last = nodes[-1]
        if last.type == "group":
            nodes = last.children["layers"]
            continue
        option = rule_for(last).softmax_option
        return last if option and last.options[option] == "softmax" else None
    return None


class Builder:
    """What the builders share: the inferred shapes, and what building collects on the
    way (each weighted parameter's l2 / lr_mult / wd_mult)."""

    def __init__(self, shapes: Context, softmax_node: LayerNode | None, load_weights: bool):
        self.shapes = shapes
        self.num_classes = shapes.num_classes
        self.softmax_node = softmax_node  # the final softmax folded into the loss
        self.load_weights = load_weights  # backbone: fetch ImageNet weights when the spec asks
        self.param_settings: dict = {}  # id(parameter) -> its options
        self.layer_modules: set = set()  # id() of the modules the spec's layers built

    def out_shape(self, node: LayerNode) -> tuple:
        return self.shapes.out_shape(node)

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
        rule = rule_for(node)
        pairs = rule.build(node, self.shapes.in_shape(node), self)
        if not isinstance(pairs, (list, tuple)) or not all(
                isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], nn.Module) for pair in pairs):
            raise error(node, f"{node.type} {node.name!r}: its build rule returned {type(pairs).__name__}, not a "
                              f"list of (name, nn.Module) pairs (docs/spec.md, your own layer types)")
        self.layer_modules.update(id(module) for _, module in pairs)
        if not node.options["trainable"]:
            for _, module in pairs:
                module.requires_grad_(False)
        if rule.weighted:
            settings = {key: node.options[key] for key in DEFAULT_PARAM_OPTIONS}
            for _, module in pairs:
                kernel = getattr(module, "weight", None)
                for parameter in module.parameters():
                    self.param_settings[id(parameter)] = dict(
                        settings, l2=settings["l2"] if parameter is kernel else 0.0)
        return pairs


def build_model(spec_or_path, input_shape=None, num_classes: int = 10,
                load_weights: bool = True) -> SpecModel:
    """The spec's model. `load_weights=False` skips a backbone's ImageNet weights (for a
    model whose state_dict is about to be loaded from a checkpoint anyway)."""
    with ONE_SPEC_WALK_AT_A_TIME:  # inference writes $in_channels values the builders read
        return _build_model(spec_or_path, input_shape, num_classes, load_weights)


def _build_model(spec_or_path, input_shape, num_classes: int, load_weights: bool) -> SpecModel:
    spec = as_spec(spec_or_path)
    shape = resolve_input(spec, input_shape)
    builder = Builder(infer(spec, shape, num_classes), final_softmax(spec.layers), load_weights)
    body = builder.build_list(spec.layers)
    frozen = [node.name for node in walk(spec.layers) if not node.options["trainable"]]
    model = SpecModel(body, shape, num_classes, builder.param_settings, frozen, builder.layer_modules,
                      final_activation="softmax" if builder.softmax_node is not None else None)
    model.spec_warnings = builder.shapes.warnings  # likely mistakes (cnnspec validate prints them too)
    model.spec_name = spec.name
    model.activation_bytes = activation_bytes(builder.shapes.records)  # one image's, float32
    return model


class SpecModel(nn.Module):
    """What build_model returns: `forward(x) -> logits` through `self.layers`, plus the
    per-layer training options the spec set (L2, learning-rate and weight-decay multipliers)."""

    def __init__(self, layers: nn.Sequential, input_shape: tuple, num_classes: int,
                 param_settings: dict, frozen_layers: list[str], layer_modules: set,
                 final_activation: str | None = None):
        super().__init__()
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.final_activation = final_activation
        by_id = {id(p): name for name, p in self.named_parameters()}
        self.param_options = {by_id[key]: settings for key, settings in param_settings.items() if key in by_id}
        self.frozen_layers = frozen_layers
        # The paths of the spec's layers, whose last part is the layer's name: not the modules
        # inside a layer (a backbone's own bn1), which may share a name with a frozen layer.
        self.layer_paths = [name for name, module in self.named_modules() if id(module) in layer_modules]
        self.frozen_this_epoch: list[nn.Parameter] = []
        # Found once here, not on every training step: (parameter, coefficient) of each L2 term.
        self.l2_terms = [(parameter, self.options_of(name)["l2"])
                         for name, parameter in self.named_parameters() if self.options_of(name)["l2"]]

    def forward(self, x):
        return self.layers(x)

    def train(self, mode: bool = True):
        # Keras: a frozen layer runs in inference mode (its batch norms keep their statistics).
        super().train(mode)
        for path in self.layer_paths:
            if path.rsplit(".", 1)[-1] in self.frozen_layers:
                self.get_submodule(path).eval()
        return self

    def options_of(self, name: str) -> dict:
        return self.param_options.get(name, dict(DEFAULT_PARAM_OPTIONS))

    def regularization_loss(self):
        """Sum over layers with `l2: c` of c * (kernel ** 2).sum(), Keras' kernel_regularizer."""
        if not self.l2_terms:
            return torch.zeros((), device=self.device_of())
        return sum(l2 * parameter.pow(2).sum() for parameter, l2 in self.l2_terms)

    def device_of(self):
        parameter = next(self.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer groups, one per (lr_mult, wd_mult), holding only trainable parameters."""
        groups: dict[tuple, dict] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            options = self.options_of(name)
            key = (options["lr_mult"], options["wd_mult"])
            if key not in groups:
                groups[key] = {"params": [], "lr": lr * key[0],
                               "weight_decay": weight_decay * key[1],
                               "lr_mult": key[0], "wd_mult": key[1]}
            groups[key]["params"].append(parameter)
        return list(groups.values())

    def start_epoch(self, epoch: int) -> None:
        """Called by the training loop before each epoch (0-based): finds the parameters
        that stop learning from this epoch on (a whitening conv's bias after `bias_epochs`)."""
        self.frozen_this_epoch = [parameter for module in self.modules() if isinstance(module, WhiteningConv)
                                  for parameter in module.frozen_in_epoch(epoch)]

    def drop_frozen_gradients(self) -> None:
        """Called between backward and the optimizer step. The optimizer skips a parameter
        without a gradient (no step, no weight decay). Dropping the gradient, rather than
        switching requires_grad off, leaves the graph as it was: torch.compile does not
        recompile mid-run."""
        for parameter in self.frozen_this_epoch:
            parameter.grad = None

    @torch.no_grad()
    def init_from_data(self, images) -> bool:
        """Data-dependent initialisation: each whitening conv from the batch as it reaches it."""
        # a whitening conv loaded by train.init_from keeps the filters it was trained with
        whitening = [m for m in self.modules() if isinstance(m, WhiteningConv)
                     and not getattr(m, "loaded_from_checkpoint", False)]
        for layer in whitening:
            layer.init_from_data(self.input_of(layer, images))
        return bool(whitening)

    def input_of(self, layer: nn.Module, images):
        """What `layer` receives when the model (in eval mode) runs on `images`."""
        captured = []

        def capture(module, args):
            captured.append(args[0])
            raise _Captured

        handle = layer.register_forward_pre_hook(capture)
        was_training = self.training
        self.eval()
        try:
            self(images)
        except _Captured:
            pass
        finally:
            handle.remove()
            self.train(was_training)
        return captured[0]


class _Captured(Exception):
    """Stops a forward pass once the input of the layer being initialised is known."""
