"""A Keras-style summary of a spec, computed from the shape rules alone.

    print(summarize("specs/ironhack_cnn.yaml").table())

Counts follow Keras: batch norm's moving mean and variance and every frozen weight are
non-trainable parameters (num_batches_tracked is not a parameter). MACs are forward
multiply-accumulates per image of the conv and dense layers. Nothing here imports torch
unless the spec holds a backbone, so `cnnspec summary` answers in well under a second.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from cnnspec.layers.registry import rule_for
from cnnspec.models.shapes import as_spec, infer

BYTES_PER_PARAM = 4  # float32


@dataclass
class Row:
    name: str  # a layer's name, or a part's label: body, shortcut (projection), branch 1, ...
    type: str  # the layer type or block name; "" for a part
    output_shape: tuple
    params: int  # the layer's own parameters plus its children's
    depth: int  # nesting level: children of blocks, residuals and parallels are indented
    in_shape: tuple = ()
    children: list = field(default_factory=list)
    repeats: int = 1  # consecutive identical siblings shown as one row (table only)
    last_name: str = ""

    @property
    def is_part(self) -> bool:
        return not self.type

    def signature(self) -> tuple:
        """What makes two sibling rows the same layer repeated (names aside)."""
        return (self.type, self.in_shape, self.output_shape, self.params,
                tuple(child.signature() for child in self.children))

    def label(self) -> str:
        if self.is_part:
            return self.name
        name = f"{self.name}..{self.last_name}" if self.repeats > 1 else self.name
        return f"{name} ({self.type})" + (f" x{self.repeats}" if self.repeats > 1 else "")


@dataclass
class Summary:
    name: str
    tree: list[Row]  # top-level rows; each holds its children
    trainable: int
    non_trainable: int
    macs: int  # forward multiply-accumulates per image (a FLOP count would be about twice this)
    warnings: list = field(default_factory=list)  # SpecErrors: likely mistakes in a valid spec

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable

    @property
    def rows(self) -> list[Row]:
        """Every row, parents before children, parts included, repeats not collapsed."""
        return list(flattened(self.tree))

    def table(self, depth: int | None = None, collapse: bool = True) -> str:
        """Keras' layout; rows nested deeper than `depth` are left out (their parameters stay
        in their parent's count) and, with `collapse`, identical consecutive siblings are one row."""
        rows = [row for row in flattened(collapsed(self.tree) if collapse else self.tree)
                if depth is None or row.depth <= depth]
        cells = [(("  " * row.depth) + row.label(), shape_text(row.output_shape),
                  f"{row.params * row.repeats:,}") for row in rows]
        header = ("Layer (type)", "Output Shape", "Param #")
        widths = [max(len(text) for text in column) for column in zip(header, *cells)]

        def line(parts) -> str:
            return "  ".join(part.ljust(width) for part, width in zip(parts, widths)).rstrip()

        rule = "=" * len(line(header))
        return "\n".join([f'Model: "{self.name}"', rule, line(header), rule,
                          *(line(cell) for cell in cells), rule,
                          f"Total params: {self.total:,} ({size_text(self.total)})",
                          f"Trainable params: {self.trainable:,} ({size_text(self.trainable)})",
                          f"Non-trainable params: {self.non_trainable:,} ({size_text(self.non_trainable)})",
                          f"MACs per image: {self.macs:,} ({count_text(self.macs)})"])


def flattened(rows: list[Row]):
    for row in rows:
        yield row
        yield from flattened(row.children)


def collapsed(rows: list[Row]) -> list[Row]:
    """Runs of identical consecutive siblings as one row with a count, at every level."""
    merged: list[Row] = []
    for row in rows:
        row = replace(row, children=collapsed(row.children))
        previous = merged[-1] if merged else None
        if previous is not None and not row.is_part and previous.signature() == row.signature():
            previous.repeats += 1
            previous.last_name = row.name
        else:
            merged.append(row)
    return merged


def shape_text(shape: tuple) -> str:
    return "(None, " + ", ".join(str(size) for size in shape) + ")"


def size_text(params: int) -> str:
    size = float(params * BYTES_PER_PARAM)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.2f} {unit}"
        size /= 1024


def count_text(count: int) -> str:
    """4,548,608 -> 4.55 M; 3,663,250,000 -> 3.66 G (decimal units, as MACs are quoted)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return str(count)


def subtotal(record) -> int:
    return record.trainable + record.non_trainable + sum(subtotal(child) for child in record.children)


def part_label(key: str) -> str:
    """`branch_1` -> `branch 1`; residual's `pre`, `body`, `shortcut` stay."""
    return key.replace("_", " ")


def row_of(record, depth: int) -> Row:
    node = record.node
    row = Row(node.name, node.options["block"] if node.type == "group" else node.type,
              record.out_shape, subtotal(record), depth, record.in_shape)
    rule = rule_for(node)
    labelled = len(rule.child_lists) > 1 or rule.branch_lists or record.parts
    if not labelled:
        row.children = [row_of(child, depth + 1) for child in record.children]
        return row
    for key, nodes in node.children.items():
        members = {id(member) for member in nodes}
        kids = [row_of(child, depth + 2) for child in record.children if id(child.node) in members]
        shape = kids[-1].output_shape if kids else record.in_shape
        label = part_label(key) + ("" if kids else " (the input)")
        row.children.append(Row(label, "", shape, sum(kid.params for kid in kids), depth + 1,
                                children=kids))
    for label, shape, params in record.parts:
        row.children.append(Row(label, "", tuple(shape), params, depth + 1))
    return row


def summarize(spec_or_path, input_shape=None, num_classes: int = 10) -> Summary:
    spec = as_spec(spec_or_path)
    ctx = infer(spec, input_shape, num_classes)
    records = ctx.records
    tree = [row_of(record, 0) for record in records if record.depth == 0]
    return Summary(name=spec.name, tree=tree,
                   trainable=sum(r.trainable for r in records),
                   non_trainable=sum(r.non_trainable for r in records),
                   macs=sum(r.macs for r in records), warnings=ctx.warnings)
