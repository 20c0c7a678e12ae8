"""Compile a spec into a plain nn.Module.

    model = build_model("specs/simcnn.yaml", input_shape=(3, 32, 32), num_classes=10)

Shape inference runs over the whole layer tree first, so every shape error is raised
before anything is built; then each layer's builder (layers.py) makes its modules and
they go, named by layer, into one nn.Sequential: `model.layers.conv_1.weight`.
"""
from __future__ import annotations

import torch
from torch import nn

from cnnspec.modules import WhiteningConv
from cnnspec.nodes import LayerNode
from cnnspec.shapes import as_spec, infer, infer_shapes, resolve_input  # noqa: F401 (infer_shapes re-exported)


def final_softmax(nodes: list[LayerNode]) -> LayerNode | None:
    """The last layer when it ends in softmax (Keras style): folded into the loss."""
    while nodes:
        last = nodes[-1]
        if last.type == "group":
            nodes = last.children.get("layers", [])
            continue
        fn = last.options.get("fn" if last.type == "activation" else "activation")
        return last if fn == "softmax" and last.type in ("activation", "dense", "conv") else None
    return None


def build_model(spec_or_path, input_shape=None, num_classes: int = 10,
                load_weights: bool = True) -> "SpecModel":
    """The spec's model. `load_weights=False` skips a backbone's ImageNet weights (for a
    model whose state_dict is about to be loaded from a checkpoint anyway)."""
    spec = as_spec(spec_or_path)
    shape = resolve_input(spec, input_shape)
    ctx = infer(spec, shape, num_classes, load_weights)
    ctx.softmax_node = final_softmax(spec.layers)
    body = ctx.build_list(spec.layers)
    frozen = [node.name for node in walk(spec.layers) if not node.options.get("trainable", True)]
    return SpecModel(body, shape, num_classes, ctx.param_settings, frozen,
                     final_activation="softmax" if ctx.softmax_node is not None else None)


def walk(nodes: list[LayerNode]):
    for node in nodes:
        yield node
        for children in node.children.values():
            yield from walk(children)


class SpecModel(nn.Module):
    """What build_model returns: `forward(x) -> logits` through `self.layers`, plus the
    per-layer training options the spec set (L2, learning-rate and weight-decay multipliers)."""

    def __init__(self, layers: nn.Sequential, input_shape: tuple, num_classes: int,
                 param_settings: dict, frozen_layers: list[str], final_activation: str | None = None):
        super().__init__()
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.final_activation = final_activation
        by_id = {id(p): name for name, p in self.named_parameters()}
        self.param_options = {by_id[key]: settings for key, settings in param_settings.items() if key in by_id}
        self.frozen_layers = frozen_layers
        self.frozen_this_epoch: list[nn.Parameter] = []
        # Found once here, not on every training step: (parameter, coefficient) of each L2 term.
        self.l2_terms = [(parameter, self.options_of(name)["l2"])
                         for name, parameter in self.named_parameters() if self.options_of(name)["l2"]]

    def forward(self, x):
        return self.layers(x)

    def train(self, mode: bool = True):
        # Keras: a frozen layer runs in inference mode (its batch norms keep their statistics).
        super().train(mode)
        for name, module in self.named_modules():
            if name.rsplit(".", 1)[-1] in self.frozen_layers:
                module.eval()
        return self

    def options_of(self, name: str) -> dict:
        return self.param_options.get(name, {"l2": 0.0, "lr_mult": 1.0, "wd_mult": 1.0})

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
        whitening = [m for m in self.modules() if isinstance(m, WhiteningConv)]
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
