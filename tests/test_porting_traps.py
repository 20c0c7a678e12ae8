"""The traps of porting a PyTorch network that used to give wrong logits silently: pooling
in ceil mode, a projection shortcut's batch norm ignoring `defaults: bn`, `padding:
symmetric` on an even kernel; and a residual whose skip an argument switches off."""
import pytest
import torch

from cnnspec import cli
from cnnspec.errors import SpecError
from cnnspec.models.compiler import build_model
from cnnspec.models.shapes import infer
from cnnspec.models.summary import summarize
from cnnspec.spec.reader import parse_spec


def spec_of(layers: str, size: int = 8, defaults: str = "") -> str:
    return (f"name: t\ninput: {{channels: 4, height: {size}, width: {size}}}\n{defaults}layers:\n{layers}"
            "  - global_avg_pool\n  - dense: num_classes\n")


@pytest.mark.parametrize("kind", ["max_pool", "avg_pool"])
@pytest.mark.parametrize("padding", [0, 1])
def test_ceil_mode_pools_give_torch_s_sizes_and_values(kind, padding):
    torch_pool = torch.nn.MaxPool2d if kind == "max_pool" else torch.nn.AvgPool2d
    for size in range(3, 14):
        text = spec_of(f"  - {kind}: {{kernel: 3, stride: 2, padding: {padding}, ceil_mode: true}}\n", size)
        spec = parse_spec(text, "t.yaml")
        ours = build_model(spec, None, 10).layers[0]
        x = torch.randn(1, 4, size, size)
        expected = torch_pool(3, 2, padding, ceil_mode=True)(x)
        assert infer(spec, None, 10).records[0].out_shape == tuple(expected.shape[1:]), size
        torch.testing.assert_close(ours(x), expected)


def test_ceil_mode_with_padding_same_is_refused():
    with pytest.raises(SpecError, match="ceil_mode with padding same"):
        infer(parse_spec(spec_of("  - max_pool: {kernel: 3, stride: 2, padding: same, ceil_mode: true}\n"),
                         "t.yaml"), None, 10)


def test_a_projection_shortcut_s_batch_norm_honours_defaults_bn():
    defaults = "defaults:\n  bn: {eps: 0.001, momentum: 0.01, affine: false}\n"
    spec = parse_spec(spec_of("  - residual: {body: [conv: 8, bn], shortcut: projection}\n",
                              defaults=defaults), "t.yaml")
    model = build_model(spec, None, 10)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 2 and all((n.eps, n.momentum, n.affine) == (0.001, 0.01, False) for n in norms)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summarize(spec).trainable == trainable  # the count follows the built shortcut


def test_symmetric_padding_on_an_even_kernel_warns_and_fails_under_strict(tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_text(spec_of("  - conv: {filters: 8, kernel: 4, stride: 4, padding: symmetric}\n", 16))
    assert cli.main(["validate", str(path)]) == 0
    assert "conv_1: padding symmetric with the even kernel 4x4 pads 1x1 on every side" in capsys.readouterr().err
    assert cli.main(["validate", "--strict", str(path)]) == 1
    assert "write padding: valid" in capsys.readouterr().err
    quiet = spec_of("  - conv: {filters: 8, kernel: 4, stride: 4, padding: valid}\n  - max_pool: 2\n", 16)
    assert infer(parse_spec(quiet, "t.yaml"), None, 10).warnings == []


def test_shortcut_none_leaves_the_body_alone():
    spec = parse_spec(spec_of("  - residual: {body: [conv: 8], shortcut: none, activation: relu}\n"), "t.yaml")
    model = build_model(spec, None, 10).eval()
    residual, conv = model.layers[0], model.layers[0].body[0]
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(residual(x), torch.relu(conv(x)))
