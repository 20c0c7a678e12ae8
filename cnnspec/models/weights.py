"""Pretrained weights for a spec-built network, matched by structure, not by name.

    transfer = load_by_structure(model, torchvision_state_dict)
    print(transfer.report("ResNet50_Weights.IMAGENET1K_V2"))

A spec's state_dict keys (`layers.stage_1.basic_block_1.layers.conv_1.weight`) never equal
torchvision's (`layer1.0.conv1.weight`), but the two list the same layers in the same order.
So both state dicts are cut into units, one per module that owns tensors (a conv's weight
and bias, a batch norm's four tensors), in the order the network computes them, and the two
unit sequences are aligned: the longest run of units, in order, whose tensors have the same
shapes one by one (a longest common subsequence). Every aligned unit is copied; the rest
keep their fresh initialisation, and the report names them. An edited architecture (a wider
head, another stem, one more block) so still starts from the weights of every layer that
kept its shape.

Order: a module's own tensors come before its children's in a state_dict, but a module that
owns a tensor beside its children (torchvision's CNBlock.layer_scale) applies it after them,
so such tensors are moved behind the children's. Shapes: a trailing size of 1 is ignored when
comparing, so nn.Linear's [out, in] fits a 1x1 conv's [out, in, 1, 1] (ConvNeXt's MLP) and
a (C, 1, 1) scale fits a (C,) one; such tensors are reshaped and reported as such. A 0-d
tensor (batch norm's num_batches_tracked) never decides a match; it is copied with its unit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SHOWN = 12  # names listed per report line before "... and N more"


@dataclass
class Unit:
    """The tensors one module owns: its dotted prefix and its state_dict keys, in order."""

    prefix: str
    keys: list
    signature: tuple  # canonical shapes of the keys' tensors, 0-d ones left out


def canonical(shape) -> tuple:
    shape = tuple(shape)
    while shape and shape[-1] == 1 and len(shape) > 1:
        shape = shape[:-1]
    return shape


def module_of(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def contains(prefix: str, other: str) -> bool:
    """Is module `other` inside module `prefix` (strictly)?"""
    return prefix == "" and other != "" or other.startswith(prefix + ".")


def units_of(state: dict) -> list[Unit]:
    """The state dict's units, each module's own tensors after its children's."""
    grouped: list[Unit] = []
    for key, tensor in state.items():
        prefix = module_of(key)
        if not grouped or grouped[-1].prefix != prefix:
            grouped.append(Unit(prefix, [], ()))
        grouped[-1].keys.append(key)
    for unit in grouped:
        unit.signature = tuple(canonical(state[key].shape) for key in unit.keys if state[key].dim() > 0)
    ordered, waiting = [], []  # waiting: units whose children are still coming
    for index, unit in enumerate(grouped):
        while waiting and not contains(waiting[-1].prefix, unit.prefix):
            ordered.append(waiting.pop())
        following = grouped[index + 1].prefix if index + 1 < len(grouped) else None
        if following is not None and contains(unit.prefix, following):
            waiting.append(unit)
        else:
            ordered.append(unit)
    ordered.extend(reversed(waiting))
    return [unit for unit in ordered if unit.signature]  # a unit of 0-d tensors alone matches nothing


def align(source: list[Unit], target: list[Unit]) -> list[tuple[int, int]]:
    """(source index, target index) of the longest in-order run of units with equal shapes.
    The common beginning and end are matched directly, the middle by dynamic programming;
    ties go to the later source unit (a head matches the last head, not an auxiliary one)."""
    start = 0
    while start < min(len(source), len(target)) and source[start].signature == target[start].signature:
        start += 1
    end = 0
    while end < min(len(source), len(target)) - start and \
            source[-1 - end].signature == target[-1 - end].signature:
        end += 1
    pairs = [(i, i) for i in range(start)]
    middle_source = [unit.signature for unit in source[start:len(source) - end]]
    middle_target = [unit.signature for unit in target[start:len(target) - end]]
    n, m = len(middle_source), len(middle_target)
    if n and m:
        table = [[0] * (m + 1) for _ in range(n + 1)]
        for i in range(n):
            row, below = table[i], table[i + 1]
            for j in range(m):
                below[j + 1] = row[j] + 1 if middle_source[i] == middle_target[j] else max(row[j + 1], below[j])
        middle, i, j = [], n, m
        while i and j:
            if middle_source[i - 1] == middle_target[j - 1] and table[i][j] == table[i - 1][j - 1] + 1:
                middle.append((start + i - 1, start + j - 1))
                i, j = i - 1, j - 1
            elif table[i - 1][j] >= table[i][j - 1]:
                i -= 1
            else:
                j -= 1
        pairs += reversed(middle)
    pairs += [(len(source) - end + k, len(target) - end + k) for k in range(end)]
    return pairs


@dataclass
class Transfer:
    """What load_by_structure copied: (source key, target key) per tensor, and the rest."""

    copied: list = field(default_factory=list)
    reshaped: list = field(default_factory=list)   # (source key, target key, source shape, target shape)
    fresh: list = field(default_factory=list)      # target keys left as they were
    unused: list = field(default_factory=list)     # source keys copied nowhere
    layers: list = field(default_factory=list)     # (target module, source module) per copied unit
    total: int = 0                                  # the target's tensors

    @property
    def complete(self) -> bool:
        return not self.fresh and not self.unused

    def report(self, source_name: str) -> str:
        lines = [f"loaded {len(self.copied)} of {self.total} tensors ({len(self.layers)} layers) "
                 f"from {source_name}, matched by structure"]
        if self.reshaped:
            lines.append(f"  reshaped (same values): {listed(f'{t} {list(a)} <- {list(b)}' for _, t, b, a in self.reshaped)}")
        if self.fresh:
            lines.append(f"  not loaded, no tensor of this shape in that place (fresh weights): "
                         f"{listed(module_of(key) for key in self.fresh)}")
        if self.unused:
            lines.append(f"  not used, no layer of this shape in that place: "
                         f"{listed(module_of(key) for key in self.unused)}")
        return "\n".join(lines)

    def mapping(self) -> str:
        """Every copied layer, one line each: `target <- source`."""
        return "\n".join(f"{target or '(model)'} <- {source or '(model)'}" for target, source in self.layers)


def listed(names) -> str:
    names = list(dict.fromkeys(names))
    more = f" ... and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def match_by_structure(source: dict, target: dict) -> tuple[dict, Transfer]:
    """The tensors of `source` (a state dict) to load into a model whose state dict is
    `target`, keyed by the target's names and shaped like the target's, and what mapped."""
    source_units, target_units = units_of(source), units_of(target)
    transfer = Transfer(total=len(target))
    loaded, used = {}, set()
    for i, j in align(source_units, target_units):
        theirs, ours = source_units[i], target_units[j]
        zero_d = [(s, t) for s, t in zip([k for k in theirs.keys if source[k].dim() == 0],
                                        [k for k in ours.keys if target[k].dim() == 0])]
        shaped = zip([k for k in theirs.keys if source[k].dim() > 0], [k for k in ours.keys if target[k].dim() > 0])
        for their_key, our_key in [*shaped, *zero_d]:
            value = source[their_key]
            if tuple(value.shape) != tuple(target[our_key].shape):
                transfer.reshaped.append((their_key, our_key, tuple(value.shape), tuple(target[our_key].shape)))
                value = value.reshape(target[our_key].shape)
            loaded[our_key] = value.to(dtype=target[our_key].dtype)
            used.add(their_key)
            transfer.copied.append((their_key, our_key))
        transfer.layers.append((ours.prefix, theirs.prefix))
    transfer.fresh = [key for key in target if key not in loaded]
    transfer.unused = [key for key in source if key not in used]
    return loaded, transfer


def load_by_structure(model, source: dict) -> Transfer:
    """Copy into `model` every tensor of state dict `source` that fits by structure."""
    loaded, transfer = match_by_structure(source, model.state_dict())
    model.load_state_dict(loaded, strict=False)
    return transfer


def read_state_dict(path) -> dict:
    """A state dict saved with torch.save: a plain {name: tensor} dict, or a checkpoint that
    holds one under "state_dict" or "model" (cnnspec's, Lightning's, many training scripts')."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("not a state dict (a {name: tensor} mapping, or a checkpoint holding one "
                         "under 'state_dict' or 'model')")
    return state
