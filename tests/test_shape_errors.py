"""Specs that cannot work fail before anything is built, with the layer's name, its
line and the shapes involved, as one SpecError line."""
import pytest

from cnnspec.errors import SpecError
from cnnspec.models.compiler import build_model
from cnnspec.models.shapes import infer_shapes
from cnnspec.models.summary import summarize
from cnnspec.spec.reader import parse_spec

HEAD = "name: bad\ninput: {channels: 3, height: 8, width: 8}\nlayers:\n"


def failure(layers: str, **kwargs) -> SpecError:
    spec = parse_spec(HEAD + layers, "bad.yaml")
    with pytest.raises(SpecError) as caught:
        infer_shapes(spec, **kwargs)
    with pytest.raises(SpecError):
        summarize(spec, **kwargs)
    with pytest.raises(SpecError):
        build_model(spec, **kwargs)
    assert "\n" not in str(caught.value)
    return caught.value


def test_spatial_size_reaching_zero():
    error = failure("  - conv: {filters: 4, padding: valid, kernel: 5}\n"
                    "  - max_pool: 2\n"
                    "  - max_pool: 2\n"
                    "  - max_pool: 2\n"
                    "  - flatten\n  - dense: num_classes\n")
    assert error.line == 7 and "max_pool_3: input 4x1x1 is smaller than the kernel 2x2" in str(error)
    assert error.key.startswith("layers[3]")


def test_dense_on_an_unflattened_input():
    error = failure("  - conv: 4\n  - dense: num_classes\n")
    assert error.line == 5 and "dense_1" in str(error) and "4x8x8" in str(error)
    assert "flatten" in str(error) and "global_avg_pool" in str(error)


def test_residual_mismatch_names_both_shapes():
    error = failure("  - conv: 4\n"
                    "  - residual:\n"
                    "      shortcut: identity\n"
                    "      body:\n"
                    "        - conv: 8\n"
                    "  - global_avg_pool\n  - dense: num_classes\n")
    assert error.line == 6 and error.key == "layers[1].shortcut" and "residual_1" in str(error)
    assert "4x8x8" in str(error) and "8x8x8" in str(error)


def test_concat_mismatch_names_both_shapes():
    error = failure("  - parallel:\n"
                    "      branches:\n"
                    "        - [conv: 4]\n"
                    "        - [conv: {filters: 4, stride: 2}]\n"
                    "  - global_avg_pool\n  - dense: num_classes\n")
    assert error.line == 4 and "parallel_1" in str(error)
    assert "4x8x8" in str(error) and "4x4x4" in str(error)


def test_add_mismatch_names_both_shapes():
    error = failure("  - parallel:\n"
                    "      merge: add\n"
                    "      branches:\n"
                    "        - [conv: 4]\n"
                    "        - [conv: 6]\n"
                    "  - global_avg_pool\n  - dense: num_classes\n")
    assert "4x8x8" in str(error) and "6x8x8" in str(error)


def test_backbone_needs_three_channels():
    error = failure("  - backbone: resnet18\n  - global_avg_pool\n  - dense: num_classes\n",
                    input_shape=(1, 32, 32))
    assert error.line == 4 and "backbone_1" in str(error) and "1x32x32" in str(error)
    assert "3 input channels" in str(error)


def test_error_inside_a_block_points_into_the_block():
    text = ("name: bad\ninput: {channels: 3, height: 4, width: 4}\n"
            "blocks:\n"
            "  shrink:\n"
            "    layers:\n"
            "      - conv: {filters: 4, kernel: 3, padding: valid}\n"
            "layers:\n"
            "  - use: shrink\n  - use: shrink\n  - flatten\n  - dense: num_classes\n")
    with pytest.raises(SpecError) as caught:
        infer_shapes(parse_spec(text, "bad.yaml"))
    assert caught.value.line == 6 and "conv_2" in str(caught.value) and "2x2" in str(caught.value)


def test_model_must_end_in_one_logit_per_class():
    spec = parse_spec(HEAD + "  - flatten\n  - dense: 7\n", "bad.yaml")
    with pytest.raises(SpecError, match=r"dense_1: the model ends in shape 7"):
        build_model(spec, num_classes=10)


def test_message_format_is_file_line_col_key():
    error = failure("  - conv: 4\n  - dense: num_classes\n")
    assert str(error).startswith(f"bad.yaml:5:{error.col}: layers[1]") if error.col else \
        str(error).startswith("bad.yaml:5: layers[1]")
