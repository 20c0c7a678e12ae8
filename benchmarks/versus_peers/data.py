"""The task every framework gets: Fashion-MNIST decoded by cnnspec's own code, the
order cnnspec's loop visits the images in each epoch, and the Dataset, Sampler and
DataLoaders the torch peers (Lightning, plain) read them through."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cnnspec.data.datasets import get_dataset, prepare  # noqa: E402

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
FRAMEWORKS = ("cnnspec", "keras", "lightning", "plain")
MODELS = ("simcnn", "ironhack_cnn", "resnet18_cifar", "fashion_cpu")


class BenchmarkMismatch(SystemExit):
    """The four do not train the same network: the comparison would mean nothing."""


@dataclass
class Task:
    model: str  # a spec name in specs/, one of MODELS
    train_images: np.ndarray  # N, C, H, W uint8, N a multiple of batch
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: list[float]
    std: list[float]
    classes: list[str]
    epochs: int
    batch: int
    lr: float
    hflip: bool
    seed: int
    device: torch.device
    workers: int
    # --recipes own: cnnspec's resolved train section (own_recipes.cnnspec_recipe), which
    # Lightning and plain translate; None: the shared recipe above (lr, hflip, batch)
    recipe: dict | None = None
    recipe_name: str | None = None  # the recipes/NAME.yaml it was resolved from

    @property
    def recipes(self) -> str:
        return "shared" if self.recipe is None else "own"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    @property
    def torch_batch(self) -> int:
        """The batch of cnnspec, Lightning and plain (Keras trains with `batch` always)."""
        return self.batch if self.recipe is None else self.recipe["batch_size"]

    @property
    def eval_batch(self) -> int:
        return max(4 * self.torch_batch, 1024)  # cnnspec's validation batch

    def normalized(self, images: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


@dataclass
class Run:
    framework: str
    model: str
    repeat: int
    epoch_ends: list[float]  # seconds from the start of the fit call to the end of each epoch
    test_accuracy: list[float]  # after each epoch
    peak_memory: int  # bytes
    images_per_epoch: int
    # the test accuracy of the weights the framework ends with, when they are not the last
    # epoch's (Keras' EarlyStopping(restore_best_weights=True) in --recipes own)
    final_accuracy: float | None = None

    @property
    def ending_accuracy(self) -> float:
        return self.test_accuracy[-1] if self.final_accuracy is None else self.final_accuracy

    @property
    def epoch_seconds(self) -> list[float]:
        return list(np.diff([0.0, *self.epoch_ends]))

    def seconds_to(self, target: float) -> float | None:
        return next((end for end, accuracy in zip(self.epoch_ends, self.test_accuracy)
                     if accuracy >= target), None)


def fashion_task_data(folder: Path, train_images: int | None, test_images: int | None, batch: int) -> dict:
    """Fashion-MNIST decoded and described by cnnspec's pipeline code (no validation
    split), optionally cut to the first images; training images cut to whole batches."""
    raw = get_dataset("fashion-mnist").decode(Path(folder))
    arrays, meta = prepare(raw, "fashion-mnist", 0.0, seed=0)
    count = len(arrays["train_labels"]) if not train_images else min(train_images, len(arrays["train_labels"]))
    tests = len(arrays["test_labels"]) if not test_images else test_images
    cut = {f"{split}_{kind}": np.array(arrays[f"{split}_{kind}"][:number])  # writable copies
           for split, number in (("train", count), ("test", tests)) for kind in ("images", "labels")}
    return whole_batches({**cut, "mean": meta["mean"], "std": meta["std"], "classes": meta["classes"]}, batch)


def whole_batches(data: dict, batch: int) -> dict:
    """`data` with its training images cut to a whole number of batches."""
    count = len(data["train_labels"])
    count -= count % batch
    if count == 0:
        raise BenchmarkMismatch(f"fewer training images than one batch of {batch}")
    return {**data, "train_images": data["train_images"][:count], "train_labels": data["train_labels"][:count]}


class ImageArrays(torch.utils.data.Dataset):
    """uint8 images converted and normalized one at a time, as ToTensor + Normalize do,
    then `augment` (torchvision transforms, --recipes own) applied to each."""

    def __init__(self, images, labels, mean, std, hflip=False, augment=None):
        self.images, self.labels, self.hflip, self.augment = images, labels, hflip, augment
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = (torch.from_numpy(self.images[index]).float().div_(255) - self.mean) / self.std
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        if self.augment is not None:
            image = self.augment(image)
        return image, int(self.labels[index])


def cnnspec_epoch_orders(task: Task) -> list[torch.Tensor]:
    """The order in which cnnspec's loop (cnnspec/training/loop.py) visits the training
    images in each epoch, as CPU index tensors: one generator on the training device
    seeded with the seed, a torch.randperm of all training images at the start of every
    epoch, cut into consecutive batches (the task's set is a whole number of batches, so
    the loop drops none). With --hflip the loop's flips draw torch.rand(batch) from the
    same generator at every step; those draws are replayed so later epochs stay in step.
    With --recipes own the recipe's augmentation (cnnspec's own `Augmentation`, built as
    the loop builds it) is run on a blank batch at every step for the same reason.
    Every framework trains in these orders: otherwise each shuffles its own way, and the
    final accuracies land points apart for that alone."""
    generator = torch.Generator(device=task.device).manual_seed(task.seed)
    count, batch = len(task.train_labels), task.torch_batch
    augment = blank = None
    if task.recipe is not None:
        from cnnspec.training.augment import Augmentation

        options = task.recipe["augment"]
        augment = Augmentation.from_params(options, count, task.seed + 1, task.device)
        # The draws depend on the batch and the shifts, not on the image size (cutout's
        # do): a blank of 3x3 pixels for a 2-pixel shift replays them 100x faster.
        side = max(options["translate"], options["crop_padding"]) + 1
        size = task.input_shape[1:] if options["cutout"] else (min(side, task.input_shape[1]),
                                                               min(side, task.input_shape[2]))
        blank = torch.zeros((batch, task.input_shape[0], *size), device=task.device)
    orders = []
    for epoch in range(task.epochs):
        order = torch.randperm(count, device=task.device, generator=generator)
        orders.append(order.cpu())
        for step in range(count // batch):
            if augment is not None:
                augment(blank, order[step * batch:(step + 1) * batch], epoch, generator)
            elif task.hflip:
                torch.rand(batch, device=task.device, generator=generator)
    return orders


class EpochOrderSampler(torch.utils.data.Sampler):
    """Yields epoch e's indices from `orders` (cnnspec_epoch_orders). Lightning calls
    set_epoch before every epoch (as it does for a DistributedSampler); the plain loop
    calls it as torchvision's reference script does."""

    def __init__(self, orders: list[torch.Tensor]):
        self.orders, self.epoch = orders, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.orders[0])

    def __iter__(self):
        return iter(self.orders[self.epoch].tolist())


def loaders(task: Task):
    cuda = task.device.type == "cuda"
    augment = None
    if task.recipe is not None:
        from benchmarks.versus_peers.own_recipes import torch_augment

        augment = torch_augment(task.recipe, task.input_shape[1:])
    train_set = ImageArrays(task.train_images, task.train_labels, task.mean, task.std, task.hflip, augment)
    test_set = ImageArrays(task.test_images, task.test_labels, task.mean, task.std)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=task.torch_batch,
                                               sampler=EpochOrderSampler(cnnspec_epoch_orders(task)),
                                               num_workers=task.workers, pin_memory=cuda)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=task.eval_batch, num_workers=task.workers,
                                              pin_memory=cuda)
    return train_loader, test_loader


def adam(model: nn.Module, task: Task):
    return torch.optim.Adam(model.parameters(), lr=task.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
