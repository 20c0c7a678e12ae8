"""A Keras-style summary of a spec, computed from the shape rules alone.

    print(summarize("specs/ironhack_cnn.yaml").table())

Counts follow Keras: batch norm's moving mean and variance and every frozen weight are
non-trainable parameters (num_batches_tracked is not a parameter). MACs are forward
multiply-accumulates per image of the conv and dense layers. Nothing here imports torch
unless the spec holds a backbone, so `cnnspec summary` answers in well under a second.
"""
from __future__ import annotations

from dataclasses import dataclass

from cnnspec.shapes import as_spec, infer

BYTES_PER_PARAM = 4  # float32


@dataclass
class Row:
    name: str
    type: str
    output_shape: tuple
    params: int  # the layer's own parameters plus its children's
    depth: int  # nesting level: children of blocks, residuals and parallels are indented


@dataclass
class Summary:
    name: str
    rows: list[Row]
    trainable: int
    non_trainable: int
    macs: int  # forward multiply-accumulates per image (a FLOP count would be about twice this)

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable

    def table(self) -> str:
        cells = [(("  " * row.depth) + f"{row.name} ({row.type})", shape_text(row.output_shape),
                  f"{row.params:,}") for row in self.rows]
        header = ("Layer (type)", "Output Shape", "Param #")
        widths = [max(len(text) for text in column) for column in zip(header, *cells)]
        line = lambda parts: "  ".join(part.ljust(width) for part, width in zip(parts, widths)).rstrip()
        rule = "=" * len(line(header))
        return "\n".join([f'Model: "{self.name}"', rule, line(header), rule,
                          *(line(cell) for cell in cells), rule,
                          f"Total params: {self.total:,} ({size_text(self.total)})",
                          f"Trainable params: {self.trainable:,} ({size_text(self.trainable)})",
                          f"Non-trainable params: {self.non_trainable:,} ({size_text(self.non_trainable)})",
                          f"MACs per image: {self.macs:,} ({self.macs / 1e6:,.2f} M)"])


def shape_text(shape: tuple) -> str:
    return "(None, " + ", ".join(str(size) for size in shape) + ")"


def size_text(params: int) -> str:
    size = float(params * BYTES_PER_PARAM)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.2f} {unit}"
        size /= 1024


def subtotal(record) -> int:
    return record.trainable + record.non_trainable + sum(subtotal(child) for child in record.children)


def summarize(spec_or_path, input_shape=None, num_classes: int = 10) -> Summary:
    spec = as_spec(spec_or_path)
    records = infer(spec, input_shape, num_classes).records
    rows = [Row(r.node.name, r.node.options["block"] if r.node.type == "group" else r.node.type,
                r.out_shape, subtotal(r), r.depth) for r in records]
    return Summary(name=spec.name, rows=rows,
                   trainable=sum(r.trainable for r in records),
                   non_trainable=sum(r.non_trainable for r in records),
                   macs=sum(r.macs for r in records))
