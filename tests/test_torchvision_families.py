"""The shipped specs of torchvision's families are torchvision's networks (cnnspec/models/parity.py):
the same trainable parameter count, every tensor copied across by structure with none left over,
then the same logits in float64, with random batch-norm statistics, at two input sizes; and
`cnnspec import` writes exactly the shipped text. The check itself fails on a spec that has
the right shapes but computes something else."""
from pathlib import Path

import pytest
import torch

from cnnspec import cli
from cnnspec.models.importer import reference_model, spec_text
from cnnspec.models.parity import check_parity, make_statistics_nontrivial
from cnnspec.models.shapes import infer
from cnnspec.spec.reader import load_spec, parse_spec

SPECS = Path(__file__).resolve().parent.parent / "specs"
slow = pytest.mark.slow

# (torchvision model = spec file name, the two input sizes); the heavy ones are marked slow
SHIPPED = [
    ("shufflenet_v2_x1_0", (32, 56)),
    ("regnet_y_400mf", (32, 56)),
    ("squeezenet1_1", (32, 56)),
    pytest.param("googlenet", (32, 56), marks=slow),
    pytest.param("resnext50_32x4d", (32, 56), marks=slow),
    pytest.param("densenet121", (32, 56), marks=slow),
    pytest.param("vgg16_bn", (32, 56), marks=slow),      # 134M parameters in float64
    pytest.param("convnext_tiny", (32, 40), marks=slow),  # float64 depthwise 7x7 convs are slow on CPU
]


@pytest.mark.parametrize("name, sizes", SHIPPED)
def test_shipped_spec_is_torchvision_s_network(name, sizes):
    spec = load_spec(SPECS / f"{name}.yaml")
    assert infer(spec, None, 10).warnings == []
    parity = check_parity(spec, reference_model(name), sizes)
    assert parity.problems == [], parity.problems
    assert parity.transfer.complete and sorted(parity.differences) == sorted(sizes)
    assert f"checked in float64 at {sizes[0]}x{sizes[0]} and {sizes[1]}x{sizes[1]}" in spec.text.replace("\n# ", " ")


@pytest.mark.parametrize("name", ["shufflenet_v2_x1_0", "regnet_y_400mf", "squeezenet1_1",
                                  pytest.param("googlenet", marks=slow),
                                  pytest.param("resnext50_32x4d", marks=slow), pytest.param("densenet121", marks=slow),
                                  pytest.param("vgg16_bn", marks=slow), pytest.param("convnext_tiny", marks=slow)])
def test_import_writes_the_shipped_spec(name):
    assert spec_text(name)[0] == (SPECS / f"{name}.yaml").read_text()


def test_the_check_fails_a_spec_with_the_right_shapes_that_computes_something_else():
    text, _ = spec_text("resnet18")
    keras_padding = text.replace("conv: {bias: false, padding: symmetric}", "conv: {bias: false, padding: same}")
    parity = check_parity(parse_spec(keras_padding, "r.yaml"), reference_model("resnet18"), (32,))
    assert parity.transfer.complete  # every shape fits ...
    assert len(parity.problems) == 1 and parity.problems[0].startswith("32x32: logits differ by up to ")  # ... yet


def test_squeezenet_without_ceil_mode_pools_is_torchvision_s_at_some_sizes_only():
    floor_pools = (SPECS / "squeezenet1_1.yaml").read_text().replace(", ceil_mode: true", "")
    parity = check_parity(parse_spec(floor_pools, "s.yaml"), reference_model("squeezenet1_1"), (32, 56))
    assert parity.differences[32] == 0.0  # floor and ceil agree at 32x32 ...
    assert len(parity.problems) == 1 and parity.problems[0].startswith("56x56: logits differ")  # ... not at 56


def test_reference_statistics_are_made_nontrivial():
    model = reference_model("shufflenet_v2_x1_0")
    make_statistics_nontrivial(model)
    bn = model.conv1[1]
    assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert len(set(bn.weight.tolist())) > 1 and len(set(bn.bias.tolist())) > 1


@pytest.mark.parametrize("arguments, code, words", [
    (["--classes", "1000000000000"], 2, "error: --classes: expected 1 to 100,000, not 1000000000000"),
    (["-o", "{tmp}"], 1, "error: {tmp}: is a folder; give a file name"),
    (["-o", "/dev/null"], 1, "error: /dev/null: is a character device, not a file; give a file name"),
], ids=["classes-10-to-the-12", "output-folder", "output-device"])
def test_cnnspec_import_refuses_an_impossible_request_before_building_anything(tmp_path, capsys, monkeypatch,
                                                                                arguments, code, words):
    """--classes 10**12 was torch's allocation traceback (10**7, tens of gigabytes, would have
    been tried); an --output that cannot be written was found only after the parity check."""
    import cnnspec.models.importer as importer

    monkeypatch.setattr(importer, "import_model", lambda *args: pytest.fail("the network was built"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["import", "resnet18", *(argument.format(tmp=tmp_path) for argument in arguments)])
    assert exit_info.value.code == code
    assert capsys.readouterr().err == words.format(tmp=tmp_path) + "\n"


def test_cnnspec_import_writes_a_checked_spec_or_nothing(tmp_path, capsys):
    target = tmp_path / "resnet18.yaml"
    assert cli.main(["import", "resnet18", "-o", str(target)]) == 0
    assert "122 of 122 tensors copied by structure" in capsys.readouterr().err
    assert load_spec(target).name == "resnet18"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["import", "mnasnet0_5", "-o", str(tmp_path / "m.yaml")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: import mnasnet0_5: a family cnnspec cannot write yet; importable: ")
    assert len(err.splitlines()) == 1 and not (tmp_path / "m.yaml").exists()
    with pytest.raises(SystemExit):
        cli.main(["import", "mobilenet_v2"])  # a family written by hand: the shipped spec is named
    assert ("import mobilenet_v2: a family cnnspec cannot write yet (specs/mobilenet_v2.yaml ships it, equal "
            "to torchvision's: copy that file, and model.weights loads torchvision's weights into it); "
            "importable: ") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["import", "resnet_51"])
    assert "import resnet_51: not a torchvision classification model" in capsys.readouterr().err
