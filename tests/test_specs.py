"""Every spec in specs/ validates, builds, runs forward and backward at its natural input
size, and its analytic summary equals the built model's parameters plus BN statistics."""
from pathlib import Path

import pytest
import torch

from cnnspec.errors import DataError
from cnnspec.layers import backbone
from cnnspec.models.compiler import build_model
from cnnspec.models.summary import summarize
from cnnspec.spec.reader import load_spec

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.yaml"))


def ids(path):
    return path.name


def counted_in_model(model):
    """Keras' convention from the model itself: trainable = parameters that require grad;
    non-trainable = frozen parameters + BN running mean and variance."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    statistics = sum(b.numel() for name, b in model.named_buffers()
                     if name.endswith(("running_mean", "running_var")))
    return trainable, frozen + statistics


def test_all_seed_specs_are_here():
    names = {path.name for path in SPECS}
    assert {"ironhack_cnn.yaml", "resnet18.yaml", "resnet18_cifar.yaml", "simcnn.yaml", "fan.yaml",
            "resnet50v2_transfer.yaml", "group3_cnn.yaml", "squeezenet.yaml", "resnet50_transfer.yaml",
            "vgg16_transfer.yaml", "speedrun94.yaml"} <= names


@pytest.mark.parametrize("path", SPECS, ids=ids)
def test_spec_summary_equals_built_model(path):
    summary = summarize(path, num_classes=10)
    model = build_model(path, num_classes=10, load_weights=False)
    assert (summary.trainable, summary.non_trainable) == counted_in_model(model)


@pytest.mark.parametrize("path", SPECS, ids=ids)
def test_spec_trains_one_step(path):
    torch.manual_seed(0)
    spec = load_spec(path)
    assert spec.input is not None, "every shipped spec states its natural input size"
    model = build_model(spec, num_classes=10, load_weights=False).train()
    images = torch.randn(2, *spec.input)
    logits = model(images)
    assert logits.shape == (2, 10)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2])) + model.regularization_loss()
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert any(p.grad.abs().sum() > 0 for p in trainable)


@pytest.mark.parametrize("name, file_name", [("resnet50_transfer.yaml", "resnet50-11ad3fa6.pth"),
                                             ("vgg16_transfer.yaml", "vgg16-397923af.pth")])
def test_imagenet_weights_missing_offline_names_file_and_folder(name, file_name, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(backbone, "IMAGENET_TIMEOUT_S", 5)

    def no_network(url, dst, *args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    path = next(p for p in SPECS if p.name == name)
    with pytest.raises(DataError) as caught:
        build_model(path)
    message = str(caught.value)
    assert file_name in message and str(tmp_path / "checkpoints") in message
    assert "network unreachable" in message and "\n" not in message
    assert f"{name}:" in message  # the spec file and line of the backbone


def test_imagenet_weights_load_from_checkpoint_folder(tmp_path, monkeypatch):
    """A weights file placed where the error says is what the backbone loads."""
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reference = torchvision.models.resnet18()
    (tmp_path / "checkpoints").mkdir()
    file_name = Path(torchvision.models.ResNet18_Weights.DEFAULT.url).name
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / file_name)
    from cnnspec.spec.reader import parse_spec

    spec = parse_spec("name: t\nlayers:\n  - backbone: {model: resnet18, weights: imagenet}\n"
                      "  - global_avg_pool\n  - dense: num_classes\n", "t.yaml")
    model = build_model(spec, input_shape=(3, 32, 32))
    torch.testing.assert_close(model.layers.backbone_1.features.conv1.weight, reference.conv1.weight)


@pytest.mark.parametrize("content, said", [
    (b"PK\x03\x04 cut short", "cannot be read as the ImageNet weights of resnet18"),
    ("resnet50", "is not the ImageNet weights of resnet18 (layer1.0.conv1.weight: [64, 64, 1, 1] there"),
])
def test_a_wrong_imagenet_file_placed_by_hand_is_one_line(content, said, tmp_path, monkeypatch):
    """Offline, the user places the file the error named: a truncated copy, or another
    model's weights under its name, is one line naming the file, not a traceback."""
    import torchvision

    from cnnspec.spec.reader import parse_spec

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    path = tmp_path / "checkpoints" / Path(torchvision.models.ResNet18_Weights.DEFAULT.url).name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(torchvision.models.get_model(content).state_dict(), path)
    spec = parse_spec("name: t\nlayers:\n  - backbone: {model: resnet18, weights: imagenet}\n"
                      "  - global_avg_pool\n  - dense: num_classes\n", "t.yaml")
    with pytest.raises(DataError) as caught:
        build_model(spec, input_shape=(3, 32, 32))
    message = str(caught.value)
    assert said in message and str(path) in message and "\n" not in message
    assert message.startswith("t.yaml:3: backbone_1: ") and "download.pytorch.org" in message
