"""Fine-tuning: start from pretrained weights or an earlier checkpoint, and unfreeze layers
part-way through.

    model:
      weights: ResNet50_Weights.IMAGENET1K_V2    # or a state-dict file; "" = fresh weights
    train:
      init_from: models/base.pt          # "" = fresh weights
      unfreeze: {after_epochs: 3, layers: [backbone]}

`init_from` copies every tensor of the checkpoint whose name (state_dict key) and shape
match the new model's, and prints which layers were loaded and which were not. A head
sized for another number of classes keeps its fresh initialisation, and the log says so;
a checkpoint none of whose tensors fit is an error naming `train.init_from`.

`model.weights` copies a torchvision weights enum's tensors (or those of a state-dict file)
into the spec's network by structure: layer order and shapes, not names
(cnnspec/models/weights.py), and prints what was loaded and what kept its fresh weights.

`unfreeze` makes layers the spec marks `trainable: false` train from the epoch after
`after_epochs` on. The optimizer holds those parameters from the first step (they get no
gradient while frozen, so it leaves them alone), and which layers are frozen is a
function of the epoch number alone: a run resumed before or after the unfreeze epoch
continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

from cnnspec.errors import ParamsError, TrainingError
from cnnspec.paths import path_problem
from cnnspec.regular_files import not_a_regular_file

SHOWN = 12  # names listed per line of the init_from report before "... and N more"


def check_init_from(options: dict) -> Path | None:
    """The checkpoint `train.init_from` names, which must be a readable file (the stages
    check it with every other path param, params.NAMED_PATHS); None when it is ""."""
    if not options["init_from"]:
        return None
    problem = path_problem(Path(str(options["init_from"])), "file")
    if problem:
        raise ParamsError(f"params.yaml: train.init_from: {options['init_from']}: {problem}")
    return Path(options["init_from"])


def _layer(key: str) -> str:
    """'layers.conv_1.weight' -> 'conv_1': the layer a state_dict key belongs to."""
    name = key.removeprefix("layers.")
    return name.rsplit(".", 1)[0] if "." in name else name


def _listed(names) -> str:
    names = list(dict.fromkeys(names))
    more = f" ... and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


BOOKKEEPING = ("num_batches_tracked",)  # batch-norm counters: not weights, never reported


def _reported(keys) -> list[str]:
    return [key for key in keys if not key.endswith(BOOKKEEPING)]


def input_hint(checkpoint: dict, input_shape) -> str | None:
    """The data settings under which more of the checkpoint would fit, when its input
    differs from this model's: `-S data.channels=3 -S data.image_size=[32,32]`."""
    theirs = checkpoint.get("input_shape")
    if not theirs or input_shape is None or list(theirs) == list(input_shape):
        return None
    channels, height, width = (int(v) for v in theirs)
    settings = []
    if channels != int(input_shape[0]):
        settings.append(f"-S data.channels={channels}")
    if (height, width) != (int(input_shape[1]), int(input_shape[2])):
        settings.append(f"-S data.image_size=[{height},{width}]")
    shape = "x".join(str(int(v)) for v in input_shape)
    return (f"  the checkpoint was trained on {channels}x{height}x{width} images, this model takes {shape}: "
            f"on your own images (data.dataset folder or csv), {' '.join(settings)} would make more of it "
            f"fit; a built-in dataset keeps its own size")


def init_from(model, path, out=None, classes=None) -> dict:
    """Load the tensors of checkpoint `path` that fit `model` (same key, same shape).
    Returns {"loaded", "reshaped", "missing", "unused"}: lists of state_dict keys.
    `classes` (the training data's class names) is compared with the checkpoint's."""
    from cnnspec.layers.whiten import WhiteningConv
    from cnnspec.models.checkpoint import read_checkpoint

    out = out or sys.stdout
    try:
        checkpoint = read_checkpoint(path)
    except TrainingError as error:
        raise ParamsError(f"params.yaml: train.init_from: {error}") from None
    source, target = checkpoint["state_dict"], model.state_dict()
    loaded = [key for key in target if key in source and source[key].shape == target[key].shape]
    reshaped = [key for key in target if key in source and source[key].shape != target[key].shape]
    missing = [key for key in target if key not in source]
    unused = [key for key in source if key not in target]
    if not _reported(loaded):  # a shared bn's step counter alone is no weight
        first = reshaped[0] if reshaped else next(iter(target), "")
        why = (f"{first} is {list(source[first].shape)} there, {list(target[first].shape)} here"
               if reshaped else f"it has no tensor named like this model's ({first})")
        raise ParamsError(f"params.yaml: train.init_from: {path}: no weight fits this model's spec "
                          f"({why}); is it a checkpoint of another spec?")
    model.load_state_dict({key: source[key] for key in loaded}, strict=False)
    for name, module in model.named_modules():
        if isinstance(module, WhiteningConv) and f"{name}.weight" in loaded:
            module.loaded_from_checkpoint = True  # keep its filters: no re-init from the new data

    weights = _reported(target)
    print(f"train.init_from: loaded {len(_reported(loaded))} of {len(weights)} tensors from {path} "
          f"(layers: {_listed(_layer(k) for k in _reported(loaded))})", file=out)
    old_classes, new_classes = checkpoint.get("num_classes"), getattr(model, "num_classes", None)
    if _reported(reshaped):
        shapes = [f"{k} {list(source[k].shape)} -> {list(target[k].shape)}" for k in _reported(reshaped)]
        print(f"  not loaded, other shape (fresh weights): {_listed(shapes)}", file=out)
        if old_classes != new_classes:
            print(f"  the head is re-initialised: the checkpoint has {old_classes} classes, this model "
                  f"{new_classes}", file=out)
        hint = input_hint(checkpoint, getattr(model, "input_shape", None))
        if hint:
            print(hint, file=out)
    if _reported(missing):
        print(f"  not loaded, not in the checkpoint (fresh weights): {_listed(_reported(missing))}", file=out)
    if _reported(unused):
        print(f"  in the checkpoint but not in this model (ignored): {_listed(_reported(unused))}", file=out)
    theirs = checkpoint.get("classes")
    if classes is not None and theirs is not None and list(theirs) != list(classes) \
            and old_classes == new_classes:
        same = sorted(theirs) == sorted(classes)
        why = "in another order" if same else "other names"
        print(f"  note: the checkpoint's classes are {why} ({_listed(theirs)}; here {_listed(classes)}): "
              f"its head was loaded, so fine-tuning starts from outputs that meant its classes"
              + ("; data.classes can set the checkpoint's order" if same else ""), file=out)
    return {"loaded": loaded, "reshaped": reshaped, "missing": missing, "unused": unused}


WEIGHTS_TIMEOUT_S = 20  # a download of model.weights never hangs
WEIGHTS_ENUM = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$")


def weights_enum_state(name: str, key: str) -> dict:
    """The state dict of torchvision weights `name` (ResNet50_Weights.IMAGENET1K_V2) from
    torch.hub's checkpoint folder, downloaded there if missing (never hangs)."""
    import torch
    import torchvision

    from cnnspec import fetch

    try:
        weights = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError):
        enum_name = name.split(".")[0]
        enum = getattr(torchvision.models, enum_name, None)
        known = ", ".join(f"{enum_name}.{member.name}" for member in enum) if enum else \
            "a name like ResNet50_Weights.IMAGENET1K_V2 (torchvision.models.get_weight)"
        raise ParamsError(f"{key}: {name}: no such torchvision weights; known: {known}") from None
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    file_name = os.path.basename(weights.url)
    path = os.path.join(folder, file_name)
    if not os.path.exists(path):
        failure = fetch.download_with_timeout(weights.url, path, WEIGHTS_TIMEOUT_S)
        if failure:
            raise ParamsError(f"{key}: {name} is not available ({failure}); place "
                              f"{file_name} in {folder} (from {weights.url})")
    from cnnspec.torch_files import UnsafeTorchFile, load_torch_file, refusal_words

    try:
        return load_torch_file(path)
    except UnsafeTorchFile as unsafe:
        problem = str(unsafe)
    except Exception as error:  # noqa: BLE001 - a damaged download fails inside torch in many ways
        problem = refusal_words(error)[:160]
    raise ParamsError(f"{key}: {path}: cannot be read as {name} ({problem}); delete it to "
                      f"download it again")


def pretrained_state(source, key: str) -> dict:
    """`source` as a state dict: torchvision weights by name, a state-dict file, a model, or a dict."""
    from cnnspec.models.weights import read_state_dict

    if isinstance(source, dict):
        return source
    if hasattr(source, "state_dict"):
        return source.state_dict()
    source = str(source)
    if WEIGHTS_ENUM.match(source) and not Path(source).exists():
        return weights_enum_state(source, key)
    if not_a_regular_file(source) == "missing":
        raise ParamsError(f"{key}: {source}: no such file (and not torchvision weights "
                          f"such as ResNet50_Weights.IMAGENET1K_V2)")
    import pickle

    from cnnspec.torch_files import refusal_words

    try:
        return read_state_dict(source)
    except (ValueError, RuntimeError, OSError, EOFError, pickle.UnpicklingError) as failure:
        raise ParamsError(f"{key}: {source}: cannot be read as weights "
                          f"({refusal_words(failure)[:200]})") from None


def load_weights(model, source, key: str = "load_weights", out=None):
    """Copy pretrained weights into `model` by structure (cnnspec/models/weights.py) and print
    what mapped. `source`: torchvision weights by name (ResNet50_Weights.IMAGENET1K_V2), the
    path of a state-dict file, an nn.Module or a state dict. Returns the Transfer. `key`
    starts the printed line and every error: the train stage's is params.yaml's key."""
    from cnnspec.models.weights import load_by_structure

    state = pretrained_state(source, key)
    transfer = load_by_structure(model, state)
    name = source if isinstance(source, (str, Path)) else type(source).__name__
    if not transfer.copied:
        first = (f" (its first: {next(iter(state))} {list(next(iter(state.values())).shape)})" if state
                 else " (it holds no tensors)")
        raise ParamsError(f"{key}: {name}: no layer of it fits this spec by order and shape{first}")
    print(f"{key}: {transfer.report(str(name))}", file=out or sys.stdout)
    return transfer


def _matches(parameter_name: str, entry: str) -> bool:
    """`entry` is a layer name (conv_1) or a dotted path into one (backbone.features.layer4):
    it matches the parameters under it."""
    return f".{parameter_name}.".find(f".{entry}.") >= 0


class UnfreezeSchedule:
    """`train.unfreeze`: the parameters of `layers` get requires_grad from epoch
    `after_epochs` (0-based) on. `apply(epoch)` before every epoch sets the state that
    epoch should have, whatever happened before: resuming needs nothing saved."""

    def __init__(self, model, options: dict, epochs: int | None = None):
        self.after_epochs = int(options["after_epochs"])
        self.entries = list(options["layers"])
        self.model = model
        named = list(model.named_parameters())
        self.parameters = []
        for entry in self.entries:
            matched = [p for name, p in named if _matches(name, entry)]
            if not matched:
                layers = _listed(dict.fromkeys(_layer(name) for name, _ in named))
                raise ParamsError(f"params.yaml: train.unfreeze.layers: {entry!r} names no layer "
                                  f"with parameters in this spec (layers: {layers})")
            frozen = [p for p in matched if not p.requires_grad]
            if not frozen:
                raise ParamsError(f"params.yaml: train.unfreeze.layers: {entry!r} is not frozen, so there is "
                                  f"nothing to unfreeze (mark it trainable: false in the spec)")
            self.parameters += frozen
        self.frozen_layers = list(getattr(model, "frozen_layers", []))
        if self.entries and epochs is not None and self.after_epochs >= epochs:
            print(f"warning: train.unfreeze.after_epochs {self.after_epochs} is not below train.epochs "
                  f"{epochs}: {', '.join(self.entries)} stay frozen for the whole run", file=sys.stderr)

    @contextlib.contextmanager
    def all_in_optimizer(self):
        """While the optimizer is built: the parameters to unfreeze count as trainable,
        so they are in its groups from the start (with their layer's lr_mult)."""
        for parameter in self.parameters:
            parameter.requires_grad_(True)
        try:
            yield
        finally:
            for parameter in self.parameters:
                parameter.requires_grad_(False)

    def apply(self, epoch: int) -> bool:
        """Freeze or unfreeze for `epoch`; True in the epoch the layers are unfrozen."""
        if not self.parameters and not self.entries:
            return False
        unfrozen = epoch >= self.after_epochs
        for parameter in self.parameters:
            parameter.requires_grad_(unfrozen)
        if hasattr(self.model, "frozen_layers"):
            # a layer named whole runs in training mode again (its batch norms update)
            self.model.frozen_layers = [name for name in self.frozen_layers
                                        if not (unfrozen and name in self.entries)]
        return unfrozen and epoch == self.after_epochs
