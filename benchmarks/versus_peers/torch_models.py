"""The hand-written torch modules Lightning and the plain script train (nn.Sequential,
or torchvision's resnet18 with the CIFAR stem), started from cnnspec's initial weights."""
from __future__ import annotations

import torch
from torch import nn

from benchmarks.versus_peers.cnnspec_train import cnnspec_model
from benchmarks.versus_peers.data import BenchmarkMismatch, Task


def torch_model(task: Task) -> nn.Module:
    """The hand-written module, starting from cnnspec's initial weights."""
    model = torch_architecture(task)
    copy_torch_weights(cnnspec_model(task), model)
    return model


def torch_architecture(task: Task) -> nn.Module:
    torch.manual_seed(task.seed)
    channels, height, width = task.input_shape
    classes = len(task.classes)
    if task.model == "simcnn":
        side = ((height - 2) // 2 - 2) // 2 - 2, ((width - 2) // 2 - 2) // 2 - 2
        return nn.Sequential(
            nn.Conv2d(channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
            nn.Linear(64 * side[0] * side[1], 64), nn.ReLU(), nn.Linear(64, classes))
    if task.model == "ironhack_cnn":
        layers, inputs = [], channels
        for filters in (32, 64, 128):
            layers += [nn.Conv2d(inputs, filters, 3, padding=1), nn.ReLU(),
                       nn.Conv2d(filters, filters, 3, padding=1), nn.ReLU(),
                       nn.BatchNorm2d(filters, eps=1e-3, momentum=0.01), nn.MaxPool2d(2)]
            inputs = filters
        return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.5),
                             nn.Linear(128 * (height // 8) * (width // 8), 128), nn.ReLU(),
                             nn.Dropout(0.3), nn.Linear(128, classes))
    if task.model == "fashion_cpu":
        layers, inputs = [], channels
        for filters, convs in ((32, 1), (48, 2), (96, 2)):  # the stem, then the two conv groups
            for conv in range(convs):
                layers += [nn.Conv2d(inputs, filters, 3, padding=1, bias=False),
                           *([nn.MaxPool2d(2)] if conv == 0 else []),  # max pool before batch norm
                           nn.BatchNorm2d(filters, eps=1e-5, momentum=0.1), nn.ReLU()]  # cnnspec's bn defaults
                inputs = filters
        return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(inputs, classes))
    if task.model == "resnet18_cifar":
        import torchvision

        model = torchvision.models.resnet18(num_classes=classes)
        model.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        return model
    raise ValueError(f"no hand-written torch model for {task.model}")


# Every framework starts from cnnspec's initial weights (its builder after
# torch.manual_seed(seed), as the train stage seeds it): otherwise each framework's own
# initializer (Keras Glorot-uniform with zero biases, torch Kaiming-uniform) moves the
# final accuracies apart by more than the point the comparison allows. The weights are
# matched by order (conv, bias, batch norm's weight, bias, mean, variance, dense, ...),
# which the shape checks and check_same_start guard.

def weights(model: nn.Module) -> list[torch.Tensor]:
    """A module's parameters and buffers in definition order, batch norm's step counter left out."""
    return [value.detach().cpu() for name, value in model.state_dict().items()
            if not name.endswith("num_batches_tracked")]


def copy_torch_weights(source: nn.Module, target: nn.Module) -> None:
    state = target.state_dict()
    names = [name for name in state if not name.endswith("num_batches_tracked")]
    values = weights(source)
    shapes = [tuple(state[name].shape) for name in names], [tuple(value.shape) for value in values]
    if shapes[0] != shapes[1]:
        raise BenchmarkMismatch(f"the hand-written module's weights {shapes[0]} do not line up with "
                                f"cnnspec's {shapes[1]}")
    target.load_state_dict(dict(zip(names, values)), strict=False)


def torch_counts(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked"))
    return trainable, buffers
