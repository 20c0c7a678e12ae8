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

A norm (only 1-d tensors) that follows a conv or a linear layer forms one unit with it, so
a conv + batch norm pair is matched as a pair; with both networks at hand (an nn.Module as
the source) a conv's stride is part of its signature too, so a projection shortcut's strided
1x1 conv never takes a bottleneck's. Together these pair RegNet's shortcut (registered before
the body it is added to) with the spec's (after it).

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


def strides_of(model) -> dict:
    """{module prefix: stride} of every strided conv of `model` (a stride of 1 is no fact: a 1x1
    conv still fits a linear layer): with both networks at hand, a 1x1
    conv with a stride (a projection shortcut) never matches one without (a bottleneck's)."""
    return {name: tuple(module.stride) for name, module in model.named_modules()
            if type(module).__name__ in ("Conv1d", "Conv2d", "Conv3d") and set(module.stride) != {1}}


def units_of(state: dict, strides: dict | None = None) -> list[Unit]:
    """The state dict's units, each module's own tensors after its children's; with `strides`
    (strides_of the model) a conv's signature holds its stride too."""
    grouped: list[Unit] = []
    for key in state:
        prefix = module_of(key)
        if not grouped or grouped[-1].prefix != prefix:
            grouped.append(Unit(prefix, [], ()))
        grouped[-1].keys.append(key)
    for unit in grouped:
        unit.signature = tuple(canonical(state[key].shape) for key in unit.keys if state[key].dim() > 0)
        if strides is not None and unit.prefix in strides:
            unit.signature += (("stride", strides[unit.prefix]),)
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
    merged: list[Unit] = []
    for unit in ordered:
        if not unit.signature:
            continue  # a unit of 0-d tensors alone matches nothing
        if merged and is_norm(unit) and not is_norm(merged[-1]):
            before = merged[-1]  # a norm after a conv or linear: one unit, matched as a pair
            merged[-1] = Unit(before.prefix, before.keys + unit.keys, before.signature + ("+",) + unit.signature)
        else:
            merged.append(unit)
    return merged


def is_norm(unit: Unit) -> bool:
    """Only 1-d tensors (a norm's scale, shift and statistics; a bias alone)."""
    return all(isinstance(shape, tuple) and len(shape) == 1 for shape in unit.signature)


def longest_common(first: list, second: list) -> list[tuple[int, int]]:
    """Index pairs of a longest common subsequence of two lists; ties go to later items of
    `first` (a head matches the last head, not an auxiliary one)."""
    n, m = len(first), len(second)
    if not n or not m:
        return []
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n):
        row, below = table[i], table[i + 1]
        for j in range(m):
            below[j + 1] = row[j] + 1 if first[i] == second[j] else max(row[j + 1], below[j])
    pairs, i, j = [], n, m
    while i and j:
        if first[i - 1] == second[j - 1] and table[i][j] == table[i - 1][j - 1] + 1:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif table[i - 1][j] >= table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def align(source: list[Unit], target: list[Unit]) -> list[tuple[int, int]]:
    """(source index, target index) of the units to copy: the longest in-order run with equal
    shapes (the common beginning and end directly, the middle by dynamic programming), then
    the same over the units left on both sides, for a module its network registers before
    the layers it computes after (RegNet's proj, its shortcut, comes before its body)."""
    theirs = [unit.signature for unit in source]
    ours = [unit.signature for unit in target]
    start = 0
    while start < min(len(theirs), len(ours)) and theirs[start] == ours[start]:
        start += 1
    end = 0
    while end < min(len(theirs), len(ours)) - start and theirs[-1 - end] == ours[-1 - end]:
        end += 1
    middle = longest_common(theirs[start:len(theirs) - end], ours[start:len(ours) - end])
    pairs = [(i, i) for i in range(start)] + [(start + i, start + j) for i, j in middle] + \
        [(len(theirs) - end + k, len(ours) - end + k) for k in range(end)]
    left_theirs = sorted(set(range(len(theirs))) - {i for i, _ in pairs})
    left_ours = sorted(set(range(len(ours))) - {j for _, j in pairs})
    again = longest_common([theirs[i] for i in left_theirs], [ours[j] for j in left_ours])
    return sorted(pairs + [(left_theirs[i], left_ours[j]) for i, j in again], key=lambda pair: pair[1])


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
            reshaped = (f"{target} {list(after)} <- {list(before)}" for _, target, before, after in self.reshaped)
            lines.append(f"  reshaped (same values): {listed(reshaped)}")
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


def match_by_structure(source: dict, target: dict, source_strides: dict | None = None,
                       target_strides: dict | None = None) -> tuple[dict, Transfer]:
    """The tensors of `source` (a state dict) to load into a model whose state dict is
    `target`, keyed by the target's names and shaped like the target's, and what mapped.
    Conv strides (strides_of each model) sharpen the match when both are given."""
    if source_strides is None or target_strides is None:
        source_strides = target_strides = None
    source_units, target_units = units_of(source, source_strides), units_of(target, target_strides)
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


def load_by_structure(model, source, source_strides: dict | None = None, assign: bool = False) -> Transfer:
    """Copy into `model` every tensor of `source` (an nn.Module or a state dict) that fits by
    structure. From a module, or with the strides of the network a state dict came from
    (strides_of), convs also match on their stride. `assign`: `model` takes the source's
    tensors themselves, no copy (a model built on the meta device gets real ones)."""
    if hasattr(source, "state_dict"):
        source, source_strides = source.state_dict(), strides_of(source)
    loaded, transfer = match_by_structure(source, model.state_dict(), source_strides, strides_of(model))
    model.load_state_dict(loaded, strict=False, assign=assign)
    return transfer


def read_state_dict(path) -> dict:
    """A state dict saved with torch.save: a plain {name: tensor} dict, or a checkpoint that
    holds one under "state_dict" or "model" (cnnspec's, Lightning's, many training scripts').
    Raises ValueError saying what is wrong with a file that is none of these, or that
    must not be loaded (torch_files.load_torch_file)."""
    import torch

    from cnnspec.torch_files import load_torch_file

    state = load_torch_file(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("not a state dict (a {name: tensor} mapping, or a checkpoint holding one "
                         "under 'state_dict' or 'model')")
    named = next((key for key in state if not isinstance(key, str)), None)
    if named is not None:
        raise ValueError(f"not a state dict: its key {str(named)[:40]} is a {type(named).__name__}, "
                         f"not a tensor's name")
    return state
