"""model.weights / cnnspec.load_weights: torchvision's weights (an enum name, a state-dict file,
a model) copied into a spec-written network by layer order and shape, never by name; an edited
architecture keeps every layer that kept its shape. No internet here: the "pretrained" weights
are torchvision models with random weights, and the proof is equal logits after the transfer."""
from pathlib import Path

import pytest
import torch
import torchvision

import cnnspec
from cnnspec.errors import ParamsError
from cnnspec.models.compiler import build_model
from cnnspec.models.parity import make_statistics_nontrivial
from cnnspec.models.weights import load_by_structure, units_of
from cnnspec.spec.reader import parse_spec
from cnnspec.training import finetune

SPECS = Path(__file__).resolve().parent.parent / "specs"
SIZE = 32


@pytest.fixture(scope="module")
def resnet18():
    """torchvision's resnet18 for 10 classes with random weights and batch-norm statistics."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).double().eval()
    make_statistics_nontrivial(model)
    return model


def spec_resnet18(text_edit=lambda text: text, classes=10):
    text = text_edit((SPECS / "resnet18.yaml").read_text())
    return build_model(parse_spec(text, "resnet18.yaml"), (3, SIZE, SIZE), classes).double().eval()


def logits(model, images):
    with torch.no_grad():
        return model(images)


def test_a_torchvision_model_s_weights_give_the_same_logits(resnet18, capsys):
    ours = spec_resnet18()
    transfer = cnnspec.load_weights(ours, resnet18)
    assert transfer.complete and len(transfer.copied) == transfer.total == len(resnet18.state_dict())
    images = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
    torch.testing.assert_close(logits(ours, images), logits(resnet18, images), rtol=1e-10, atol=1e-10)
    out = capsys.readouterr().out
    assert out.startswith("load_weights: loaded 122 of 122 tensors (") and "not loaded" not in out
    assert "layers.conv_1 <- conv1" in transfer.mapping().splitlines()  # a conv and its bn, as one unit


def test_an_edited_architecture_keeps_the_weights_of_every_layer_that_kept_its_shape(resnet18, capsys):
    def edit(text):  # a wider head (a hidden layer) and one more block in the last stage
        text = text.replace("  - dense: num_classes",
                            "  - dense: {units: 256, activation: relu}\n  - dense: num_classes")
        return text.replace("      - use: {block: basic_block, filters: $filters}",
                            "      - use: {block: basic_block, filters: $filters}\n"
                            "      - use: {block: basic_block, filters: $filters}")
    torch.manual_seed(1)
    ours = spec_resnet18(edit, classes=7)
    fresh_before = {key: value.clone() for key, value in ours.state_dict().items()}
    transfer = cnnspec.load_weights(ours, resnet18)
    report = capsys.readouterr().out
    theirs = resnet18.state_dict()
    ours_state = ours.state_dict()
    # the stem and the first block of every stage come from torchvision, by position
    assert torch.equal(ours_state["layers.conv_1.weight"], theirs["conv1.weight"])
    assert torch.equal(ours_state["layers.bn_1.running_var"], theirs["bn1.running_var"])
    # the fresh layers: the new hidden dense (2 tensors), the new head (2), and one block per stage
    fresh_layers = {key.rsplit(".", 1)[0] for key in transfer.fresh}
    assert {"layers.dense_1", "layers.dense_2"} <= fresh_layers
    assert all(torch.equal(ours_state[key], fresh_before[key]) for key in transfer.fresh)
    assert {key.rsplit(".", 1)[0] for key in transfer.unused} == {"fc"}
    assert "not loaded, no tensor of this shape in that place (fresh weights)" in report
    assert "not used, no layer of this shape in that place: fc" in report
    # the copied weights are torchvision's, each with the shape it had there
    assert all(theirs[source].shape == ours_state[target].shape for source, target in transfer.copied)


def test_weights_from_a_state_dict_file_or_a_checkpoint_holding_one(resnet18, tmp_path, capsys):
    plain, wrapped = tmp_path / "resnet18.pth", tmp_path / "trained.ckpt"
    torch.save(resnet18.state_dict(), plain)
    torch.save({"epoch": 3, "state_dict": resnet18.state_dict()}, wrapped)
    from_plain = finetune.pretrained_state(str(plain), "model.weights")
    assert list(from_plain) == list(finetune.pretrained_state(str(wrapped), "model.weights"))
    ours = spec_resnet18()
    assert finetune.load_weights(ours, str(plain)).complete
    images = torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64)
    torch.testing.assert_close(logits(ours, images), logits(resnet18, images), rtol=1e-10, atol=1e-10)
    assert f"from {plain}, matched by structure" in capsys.readouterr().out


def test_a_torchvision_weights_name_is_read_from_torch_hub_s_folder(resnet18, tmp_path, monkeypatch, capsys):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    torch.save({key: value.float() for key, value in resnet18.state_dict().items()},
               tmp_path / "checkpoints" / Path(weights.url).name)  # as torchvision ships them

    def no_download(url, path, timeout_s):
        raise AssertionError("the file is there: nothing to download")

    monkeypatch.setattr("cnnspec.fetch.download_with_timeout", no_download)
    ours = spec_resnet18()
    assert finetune.load_weights(ours, "ResNet18_Weights.IMAGENET1K_V1").complete
    assert torch.equal(ours.state_dict()["layers.conv_1.weight"], resnet18.conv1.weight.float().double())
    assert "load_weights: loaded 122 of 122 tensors" in capsys.readouterr().out


def test_weights_that_cannot_be_had_are_one_line_naming_what_asked_for_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr("cnnspec.fetch.download_with_timeout",
                        lambda url, path, timeout_s: "download failed: no internet")
    ours = spec_resnet18()
    with pytest.raises(ParamsError) as missing:
        finetune.load_weights(ours, "ResNet18_Weights.IMAGENET1K_V1")
    # called from Python, the error names the function, not a params.yaml nobody wrote
    assert str(missing.value).startswith("load_weights: ResNet18_Weights.IMAGENET1K_V1 is not "
                                         "available (download failed: no internet); place resnet18-f37072fd.pth in ")
    with pytest.raises(ParamsError, match="no such torchvision weights; known: ResNet18_Weights.IMAGENET1K_V1$"):
        finetune.load_weights(ours, "ResNet18_Weights.IMAGENET1K_V9")
    with pytest.raises(ParamsError, match=r"load_weights: nope.pth: no such file \(and not torchvision weights"):
        finetune.load_weights(ours, "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ParamsError, match="garbage.pth: cannot be read as weights"):
        finetune.load_weights(ours, str(garbage))
    torch.save({"classifier.weight": torch.zeros(3, 9)}, tmp_path / "other.pth")
    with pytest.raises(ParamsError, match="no layer of it fits this spec by order and shape"):
        finetune.load_weights(ours, str(tmp_path / "other.pth"))


def test_a_linear_layer_fits_a_1x1_conv_and_a_norm_travels_with_its_conv():
    source = {"block.0.weight": torch.randn(8, 4), "block.0.bias": torch.randn(8),
              "scale": torch.randn(8, 1, 1)}
    target_model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1))
    target_model.add_module("scale", torch.nn.Module())
    target_model.scale.weight = torch.nn.Parameter(torch.zeros(8))
    transfer = load_by_structure(target_model, source)
    assert transfer.complete and len(transfer.reshaped) == 2
    assert torch.equal(target_model[0].weight.flatten(1), source["block.0.weight"])
    # a module's own tensor beside its children (ConvNeXt's layer_scale) comes after them
    order = units_of({"blk.layer_scale": torch.ones(4, 1, 1), "blk.block.0.weight": torch.ones(4, 1, 7, 7),
                      "blk.block.0.bias": torch.ones(4), "head.weight": torch.ones(2, 4)})
    assert [unit.keys for unit in order] == [["blk.block.0.weight", "blk.block.0.bias", "blk.layer_scale"],
                                             ["head.weight"]]
    bn = {"conv.weight": torch.ones(4, 3, 3, 3), "bn.weight": torch.ones(4), "bn.bias": torch.ones(4),
          "bn.running_mean": torch.ones(4), "bn.running_var": torch.ones(4),
          "bn.num_batches_tracked": torch.tensor(0)}
    (pair,) = units_of(bn)
    assert pair.keys == list(bn) and len(pair.signature) == 6  # conv, "+", four 1-d tensors; 0-d left out


def test_params_take_model_weights():
    from cnnspec.pipeline.params import load_params

    params = load_params(SPECS.parent / "params.yaml", ["model"])
    assert params["model"]["weights"] == ""
