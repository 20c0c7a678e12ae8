"""The Keras-style summary: rows, footer format, MACs, and no torch import."""
from pathlib import Path

from cnnspec.models.summary import summarize
from cnnspec.spec.reader import parse_spec
from tests.no_torch import run_without_torch

ROOT = Path(__file__).resolve().parent.parent


def test_ironhack_table_footer_is_keras_exact():
    table = summarize(ROOT / "specs" / "ironhack_cnn.yaml").table()
    lines = table.splitlines()
    assert "Layer (type)" in lines[2] and "Output Shape" in lines[2] and "Param #" in lines[2]
    assert "Total params: 551,466 (2.10 MB)" in lines
    assert "Trainable params: 551,018 (2.10 MB)" in lines
    assert "Non-trainable params: 448 (1.75 KB)" in lines
    assert any(line.startswith("MACs per image: ") for line in lines)


def test_nested_rows_are_indented_with_their_subtotal():
    spec = parse_spec("""
name: nest
input: {channels: 3, height: 8, width: 8}
layers:
  - residual:
      body:
        - conv: {filters: 3, bias: false}
        - bn
  - flatten
  - dense: num_classes
""", "nest.yaml")
    summary = summarize(spec)
    rows = {row.name: row for row in summary.rows}
    assert [(row.name, row.depth) for row in summary.rows] == [
        ("residual_1", 0), ("body", 1), ("conv_1", 2), ("bn_1", 2), ("flatten_1", 0), ("dense_1", 0)]
    assert rows["conv_1"].params == 81 and rows["bn_1"].params == 12
    assert rows["residual_1"].params == rows["body"].params == 81 + 12
    assert rows["dense_1"].output_shape == (10,) and rows["dense_1"].params == 192 * 10 + 10
    assert "\n  body " in summary.table() and "\n    conv_1 (conv)" in summary.table()
    # MACs: conv 3x3x3 per output of 3x8x8, dense 192x10
    assert summary.macs == 3 * 8 * 8 * 27 + 192 * 10


def test_summary_counts_follow_the_options():
    spec = parse_spec("""
name: counts
input: {channels: 3, height: 4, width: 4}
layers:
  - conv: {filters: 2, kernel: 1, trainable: false}
  - bn: {weight_trainable: false}
  - whiten
  - flatten
  - dense: {units: 5}
""", "counts.yaml")
    summary = summarize(spec, num_classes=5)
    whiten_filters = 2 * 2 * 2 * 2  # 2 * C * k * k with C = 2
    assert summary.non_trainable == (3 * 2 + 2) + (2 + 2 * 2) + whiten_filters * 2 * 4
    assert summary.trainable == 2 + whiten_filters + (whiten_filters * 3 * 3 * 5 + 5)


def test_summary_does_not_import_torch():
    """`cnnspec summary` must answer in under a second; importing torch alone takes seconds."""
    run_without_torch("from cnnspec.models.summary import summarize; "
                      "s = summarize('specs/resnet50v2_transfer.yaml'); assert s.total == 26159370")
