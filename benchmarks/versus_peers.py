"""cnnspec against what a user would pick instead: the same network, on the same real
data, with the same recipe, trained by
  cnnspec    `cnnspec.training.loop.train`, called as stages/train.py calls it (resume state
             and DVCLive log written every epoch, to a temporary folder);
  keras      Keras 3 on its torch backend, `model.fit` on numpy arrays (the seeds' API),
             one unshuffled fit call per epoch, the model written with keras layers
             mirroring the spec;
  lightning  PyTorch Lightning, `Trainer.fit` with a LightningModule and DataLoaders
             (defaults kept: checkpoint and logger in a temporary folder);
  plain      a script in the style of torchvision's reference train.py: a Dataset that
             converts and normalizes each image, a DataLoader with workers, a loop that
             reads loss.item() every step, an evaluate() over a test DataLoader.
Lightning and plain train the same hand-written nn.Module (nn.Sequential, or
torchvision's resnet18 with the CIFAR stem), not cnnspec's compiled model.

    python benchmarks/versus_peers.py                      # simcnn + ironhack_cnn, 6,400 images, CPU
    python benchmarks/versus_peers.py --quick              # seconds: a tiny subset, one epoch
    python benchmarks/versus_peers.py --device cuda --models simcnn ironhack_cnn resnet18_cifar \\
        --train-images 0 --epochs 5 --repeats 3            # all 60,000 images on a GPU

Data: Fashion-MNIST from Debian (/usr/share/datasets/fashion-mnist/), decoded and
described by cnnspec's own `get_dataset(...).decode` and `prepare` (no validation split;
per-channel mean/std of the training images, which every framework uses to normalize).
The training set is cut to a whole number of batches so that every framework trains
the same images per epoch (cnnspec drops a partial last batch, Keras does not), and
all four see them in cnnspec's order: each epoch's torch.randperm from a generator seeded
as cnnspec's loop seeds it (`cnnspec_epoch_orders`), served to Lightning and plain by a
Sampler and to Keras as the epoch's images gathered in that order (the gather is timed,
as Keras' own shuffle inside fit was). Every
framework evaluates the test set after every epoch (cnnspec through its validation
split, which is the test set here; Keras through `validation_data`; Lightning through
`val_dataloaders`), in batches of max(4 x batch, 1024) as cnnspec does.

Recipe, identical everywhere: Adam (lr --lr, betas 0.9/0.999, eps 1e-8, no weight
decay), cross-entropy on logits (a spec's final softmax is folded into the loss, in Keras
the softmax stays in the model as the seeds wrote it), batch --batch, --epochs epochs, fp32,
no schedule, no augmentation (or a random horizontal flip with --hflip).

Runs are interleaved in one process (repeat r runs every model and framework, the
framework order rotating by one each repeat) and repeated --repeats times. Printed per
model and framework: seconds per epoch (median over all epochs of all repeats, with the
min-max), training images/s (images of an epoch over the median epoch, test evaluation
included), seconds to --target test accuracy (median over repeats, from the start of
the fit call), final test accuracy (median), peak memory (CUDA: max_memory_allocated;
CPU: peak PSS of the process and its DataLoader workers, sampled from /proc every
0.1 s; the process holds all four frameworks' libraries, so the figure includes them),
and each peer's ratio to cnnspec (peer / cnnspec for times: above 1 = cnnspec faster;
the median over repeats of the ratio within each repeat, which cancels load that drifts
between repeats on a shared machine).
Parameter counts (trainable, and non-trainable buffers such as batch-norm statistics)
must be equal across the four, and all four start from cnnspec's initial weights (copied
into the torch module and, converted to Keras' layouts, into the Keras model; their
outputs on a batch must agree within 1e-4), or the script stops before training. Final accuracies
more than --accuracy-tolerance apart are flagged. Never asserts a timing.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_loop_overhead import NO_EXTRAS, train_params  # noqa: E402
from cnnspec import build_model, load_spec  # noqa: E402
from cnnspec.data.datasets import get_dataset, prepare  # noqa: E402
from cnnspec.errors import exit_on_user_error  # noqa: E402
from cnnspec.training.device import pick_device  # noqa: E402
from cnnspec.training.loop import train  # noqa: E402

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
FRAMEWORKS = ("cnnspec", "keras", "lightning", "plain")
MODELS = ("simcnn", "ironhack_cnn", "resnet18_cifar")


class BenchmarkMismatch(SystemExit):
    """The four do not train the same network: the comparison would mean nothing."""


# ---------------------------------------------------------------- the task every framework gets

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

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    @property
    def eval_batch(self) -> int:
        return max(4 * self.batch, 1024)  # cnnspec's validation batch

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
    count -= count % batch
    if count == 0:
        raise BenchmarkMismatch(f"fewer training images than one batch of {batch}")
    tests = len(arrays["test_labels"]) if not test_images else test_images
    cut = {f"{split}_{kind}": np.array(arrays[f"{split}_{kind}"][:number])  # writable copies
           for split, number in (("train", count), ("test", tests)) for kind in ("images", "labels")}
    return {**cut,
            "mean": meta["mean"], "std": meta["std"], "classes": meta["classes"]}


# ---------------------------------------------------------------- peak memory

def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


class PeakMemory:
    """CUDA: torch.cuda.max_memory_allocated. CPU: the highest PSS of this process plus
    its children (DataLoader workers share pages with it; PSS counts shared pages once),
    sampled every 0.1 s on a thread."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def _sample(self) -> int:
        pid = os.getpid()
        return _pss(pid) + sum(_pss(child) for child in _children(pid))

    def _watch(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self._sample())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self._sample()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._sample())


# ---------------------------------------------------------------- cnnspec

def cnnspec_model(task: Task) -> nn.Module:
    torch.manual_seed(task.seed)  # the initial weights, as stages/train.py seeds them
    return build_model(load_spec(ROOT / "specs" / f"{task.model}.yaml"), task.input_shape, len(task.classes))


def cnnspec_params(task: Task) -> dict:
    """params.yaml's train section turned into the shared recipe."""
    return train_params(**{**NO_EXTRAS, "epochs": task.epochs, "batch_size": task.batch, "seed": task.seed,
                           "precision": "off", "channels_last": False, "deterministic": False,
                           "optimizer": {"name": "adam", "lr": task.lr, "betas": [0.9, 0.999], "weight_decay": 0.0},
                           "loss": {"name": "cross_entropy", "label_smoothing": 0.0},
                           "augment": {**NO_EXTRAS["augment"], "hflip": task.hflip}})


def train_with_cnnspec(model, data: dict, params: dict, device, folder: Path):
    """The train stage's call (stages/train.py): resume state and DVCLive log, each epoch."""
    return train(model, data, params, device, resume_path=folder / "resume" / "state.pt",
                 log_dir=folder / "metrics")


def run_cnnspec(task: Task) -> tuple[list[float], list[float]]:
    model = cnnspec_model(task)
    data = {"train_images": task.train_images, "train_labels": task.train_labels,
            "val_images": task.test_images, "val_labels": task.test_labels,  # validated every epoch
            "meta": {"dataset": "fashion-mnist", "classes": task.classes, "input_shape": list(task.input_shape),
                     "mean": task.mean, "std": task.std,
                     "counts": {"train": len(task.train_labels), "val": len(task.test_labels)}}}
    starts = []  # the loop calls model.start_epoch before each epoch: the end of the one before
    original_start_epoch = model.start_epoch

    def start_epoch(epoch):
        starts.append(time.perf_counter())
        original_start_epoch(epoch)

    model.start_epoch = start_epoch
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = train_with_cnnspec(model, data, cnnspec_params(task), task.device, Path(folder))
        _synchronize(task.device)
        ended = time.perf_counter()
    ends = [moment - started for moment in starts[1:]] + [ended - started]
    if len(ends) != task.epochs:  # the loop stopped calling the hook: spread the time evenly
        ends = [(ended - started) * (epoch + 1) / task.epochs for epoch in range(task.epochs)]
    return ends, [record["val/accuracy"] for record in result.history]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- hand-written torch models (lightning, plain)

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
    if task.model == "resnet18_cifar":
        import torchvision

        model = torchvision.models.resnet18(num_classes=classes)
        model.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        return model
    raise ValueError(f"no hand-written torch model for {task.model}")


class ImageArrays(torch.utils.data.Dataset):
    """uint8 images converted and normalized one at a time, as ToTensor + Normalize do."""

    def __init__(self, images, labels, mean, std, hflip=False):
        self.images, self.labels, self.hflip = images, labels, hflip
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = (torch.from_numpy(self.images[index]).float().div_(255) - self.mean) / self.std
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, int(self.labels[index])


def cnnspec_epoch_orders(task: Task) -> list[torch.Tensor]:
    """The order in which cnnspec's loop (cnnspec/training/loop.py) visits the training
    images in each epoch, as CPU index tensors: one generator on the training device
    seeded with the seed, a torch.randperm of all training images at the start of every
    epoch, cut into consecutive batches (the task's set is a whole number of batches, so
    the loop drops none). With --hflip the loop's flips draw torch.rand(batch) from the
    same generator at every step; those draws are replayed so later epochs stay in step.
    Every framework trains in these orders: otherwise each shuffles its own way, and the
    final accuracies land points apart for that alone."""
    generator = torch.Generator(device=task.device).manual_seed(task.seed)
    count = len(task.train_labels)
    orders = []
    for _ in range(task.epochs):
        orders.append(torch.randperm(count, device=task.device, generator=generator).cpu())
        if task.hflip:
            for _ in range(count // task.batch):
                torch.rand(task.batch, device=task.device, generator=generator)
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
    train_set = ImageArrays(task.train_images, task.train_labels, task.mean, task.std, task.hflip)
    test_set = ImageArrays(task.test_images, task.test_labels, task.mean, task.std)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=task.batch,
                                               sampler=EpochOrderSampler(cnnspec_epoch_orders(task)),
                                               num_workers=task.workers, pin_memory=cuda)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=task.eval_batch, num_workers=task.workers,
                                              pin_memory=cuda)
    return train_loader, test_loader


def adam(model: nn.Module, task: Task):
    return torch.optim.Adam(model.parameters(), lr=task.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


# ---------------------------------------------------------------- plain PyTorch (torchvision reference style)

def run_plain(task: Task) -> tuple[list[float], list[float]]:
    model = torch_model(task).to(task.device)
    criterion = nn.CrossEntropyLoss()
    optimizer = adam(model, task)
    train_loader, test_loader = loaders(task)
    ends, accuracies = [], []
    started = time.perf_counter()
    for epoch in range(task.epochs):
        train_loader.sampler.set_epoch(epoch)
        model.train()
        running_loss = 0.0
        for images, labels in train_loader:
            images = images.to(task.device, non_blocking=True)
            labels = labels.to(task.device, non_blocking=True)
            loss = criterion(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()  # the reference's MetricLogger reads the loss every step
        model.eval()
        correct = 0
        with torch.inference_mode():
            for images, labels in test_loader:
                images = images.to(task.device, non_blocking=True)
                labels = labels.to(task.device, non_blocking=True)
                correct += (model(images).argmax(1) == labels).sum().item()
        accuracies.append(correct / len(test_loader.dataset))
        ends.append(time.perf_counter() - started)
    return ends, accuracies


# ---------------------------------------------------------------- PyTorch Lightning

def run_lightning(task: Task) -> tuple[list[float], list[float]]:
    import logging
    import warnings

    import pytorch_lightning as pl

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)  # "GPU available: ...", tips
    warnings.filterwarnings("ignore", module="pytorch_lightning")

    class Classifier(pl.LightningModule):
        def __init__(self, network):
            super().__init__()
            self.network, self.criterion = network, nn.CrossEntropyLoss()
            self.correct = self.seen = 0
            self.ends, self.accuracies = [], []

        def forward(self, images):
            return self.network(images)

        def training_step(self, batch, batch_index):
            images, labels = batch
            loss = self.criterion(self(images), labels)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_index):
            images, labels = batch
            self.correct += (self(images).argmax(1) == labels).sum()
            self.seen += len(labels)

        def on_validation_epoch_end(self):
            accuracy = float(self.correct) / max(self.seen, 1)
            self.log("val_accuracy", accuracy)
            if not self.trainer.sanity_checking:
                self.accuracies.append(accuracy)
            self.correct = self.seen = 0

        def on_train_epoch_end(self):  # after the epoch's validation
            self.ends.append(time.perf_counter() - self.started)

        def configure_optimizers(self):
            return adam(self, task)

    module = Classifier(torch_model(task))
    train_loader, test_loader = loaders(task)
    with tempfile.TemporaryDirectory() as folder:
        trainer = pl.Trainer(max_epochs=task.epochs, accelerator="gpu" if task.device.type == "cuda" else "cpu",
                             devices=1, default_root_dir=folder, enable_progress_bar=False,
                             enable_model_summary=False)
        module.started = time.perf_counter()
        trainer.fit(module, train_loader, test_loader)
        _synchronize(task.device)
    return module.ends, module.accuracies


# ---------------------------------------------------------------- Keras 3 (torch backend)

def import_keras(device: torch.device):
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
        os.environ["KERAS_TORCH_DEVICE"] = "cuda" if device.type == "cuda" else "cpu"
    import keras

    if keras.backend.backend() != "torch":
        raise BenchmarkMismatch(f"keras was imported with the {keras.backend.backend()} backend; "
                                "run with KERAS_BACKEND=torch")
    return keras


def keras_model(task: Task):
    """The spec written with keras layers, as the seed reports wrote these networks."""
    keras = import_keras(task.device)
    from keras import layers

    keras.utils.set_random_seed(task.seed)
    channels, height, width = task.input_shape
    inputs = keras.Input((height, width, channels))
    x = layers.RandomFlip("horizontal")(inputs) if task.hflip else inputs
    if task.model == "simcnn":
        x = layers.Conv2D(32, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Conv2D(64, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Conv2D(64, 3, activation="relu")(x)
        x = layers.Flatten()(x)
        x = layers.Dense(64, activation="relu")(x)
        outputs = layers.Dense(len(task.classes))(x)  # logits: the spec has no final softmax
    elif task.model == "ironhack_cnn":
        for filters in (32, 64, 128):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = layers.BatchNormalization()(x)  # Keras' momentum 0.99, eps 1e-3 = the spec's
            x = layers.MaxPooling2D(2)(x)
        x = layers.Flatten()(x)
        x = layers.Dropout(0.5)(x)
        x = layers.Dense(128, activation="relu")(x)
        x = layers.Dropout(0.3)(x)
        outputs = layers.Dense(len(task.classes), activation="softmax")(x)
    elif task.model == "resnet18_cifar":
        x = layers.Conv2D(64, 3, padding="same", use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x))
        for filters, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for block in range(2):
                step = stride if block == 0 else 1
                shortcut = x
                # torch's padding=1 on both sides: Keras' "same" pads a stride-2 conv of an
                # even-sized input on the bottom and right only, a shifted grid
                y = layers.Conv2D(filters, 3, strides=step, use_bias=False)(layers.ZeroPadding2D(1)(x))
                y = layers.ReLU()(layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(y))
                y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
                y = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(y)
                if step != 1 or shortcut.shape[-1] != filters:
                    shortcut = layers.Conv2D(filters, 1, strides=step, use_bias=False)(shortcut)
                    shortcut = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(shortcut)
                x = layers.ReLU()(layers.Add()([y, shortcut]))
        x = layers.GlobalAveragePooling2D()(x)
        outputs = layers.Dense(len(task.classes))(x)
    else:
        raise ValueError(f"no keras model for {task.model}")
    model = keras.Model(inputs, outputs, name=task.model)
    set_keras_weights(model, cnnspec_model(task))
    return model


def keras_logits(model) -> bool:
    return model.layers[-1].get_config().get("activation") != "softmax"


def run_keras(task: Task) -> tuple[list[float], list[float]]:
    keras = import_keras(task.device)
    model = keras_model(task)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=task.lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=keras_logits(model)),
                  metrics=["accuracy"])
    channels_last = (0, 2, 3, 1)
    x_train = task.normalized(task.train_images).transpose(channels_last).copy()
    x_test = task.normalized(task.test_images).transpose(channels_last).copy()
    ends = []

    class EpochEnds(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ends.append(time.perf_counter() - started)

    orders = [order.numpy() for order in cnnspec_epoch_orders(task)]
    accuracies = []
    started = time.perf_counter()
    for epoch, order in enumerate(orders):
        # One fit call per epoch on the images in cnnspec's order, unshuffled: the gather
        # stands in for the shuffle fit(shuffle=True) does inside the timed call, so it is timed too.
        history = model.fit(x_train[order], task.train_labels[order], batch_size=task.batch,
                            initial_epoch=epoch, epochs=epoch + 1, shuffle=False,
                            validation_data=(x_test, task.test_labels), validation_batch_size=task.eval_batch,
                            callbacks=[EpochEnds()], verbose=0)
        accuracies += history.history["val_accuracy"]
    _synchronize(task.device)
    return ends, accuracies


# ---------------------------------------------------------------- the same network everywhere

# Every framework starts from cnnspec's initial weights (its builder after
# torch.manual_seed(seed), as the train stage seeds it): otherwise each framework's own
# initializer (Keras Glorot-uniform with zero biases, torch Kaiming-uniform) moves the
# final accuracies apart by more than the point the comparison allows. The weights are
# matched by order (conv, bias, batch norm's weight, bias, mean, variance, dense, ...),
# which the shape checks and check_same_start guard.

def _weights(model: nn.Module) -> list[torch.Tensor]:
    """A module's parameters and buffers in definition order, batch norm's step counter left out."""
    return [value.detach().cpu() for name, value in model.state_dict().items()
            if not name.endswith("num_batches_tracked")]


def copy_torch_weights(source: nn.Module, target: nn.Module) -> None:
    state = target.state_dict()
    names = [name for name in state if not name.endswith("num_batches_tracked")]
    values = _weights(source)
    shapes = [tuple(state[name].shape) for name in names], [tuple(value.shape) for value in values]
    if shapes[0] != shapes[1]:
        raise BenchmarkMismatch(f"the hand-written module's weights {shapes[0]} do not line up with "
                                f"cnnspec's {shapes[1]}")
    target.load_state_dict(dict(zip(names, values)), strict=False)


def keras_dense_kernel(weight: torch.Tensor, flattened: tuple[int, int, int] | None) -> np.ndarray:
    """torch's Linear weight (out, in) as a Keras Dense kernel (in, out). `flattened`: the
    (height, width, channels) of the feature map a Flatten turned into this layer's input:
    torch flattens it channels first (c, h, w), Keras channels last (h, w, c), so the
    inputs are reordered too."""
    if flattened is not None:
        height, width, channels = flattened
        weight = weight.reshape(len(weight), channels, height, width).permute(0, 2, 3, 1).reshape(len(weight), -1)
    return weight.T.numpy()


def _keras_creation_order(layer) -> int:
    """Keras numbers the layers of a kind as they are made: conv2d, conv2d_1, conv2d_2, ..."""
    base, _, number = layer.name.rpartition("_")
    return int(number) if base and number.isdigit() else 0


def set_keras_weights(model, source: nn.Module) -> None:
    """`source`'s weights into the Keras model: conv kernels OIHW -> HWIO, dense kernels
    transposed (their inputs reordered after a Flatten), biases and batch norm's gamma,
    beta, moving mean and variance as they are (torch's order too). Matched per kind of
    layer in the order the layers were made, which is the torch module's order; not
    model.layers' order, which puts a residual block's shortcut conv between the body's
    last conv and its batch norm."""
    from keras import layers

    kinds = {"conv": (nn.Conv2d, layers.Conv2D), "batch norm": (nn.BatchNorm2d, layers.BatchNormalization),
             "dense": (nn.Linear, layers.Dense)}
    flattened, last_flatten = {}, None  # Dense layer name -> (height, width, channels) of a Flatten before it
    for layer in model.layers:
        if isinstance(layer, layers.Flatten):
            last_flatten = tuple(layer.input.shape[1:])
        elif isinstance(layer, layers.Dense):
            flattened[layer.name], last_flatten = last_flatten, None
    for kind, (torch_type, keras_type) in kinds.items():
        sources = [module for module in source.modules() if isinstance(module, torch_type)]
        targets = sorted((layer for layer in model.layers if isinstance(layer, keras_type)), key=_keras_creation_order)
        if len(sources) != len(targets):
            raise BenchmarkMismatch(f"keras {model.name}: {len(targets)} {kind} layers, cnnspec's model "
                                    f"{len(sources)}")
        for module, layer in zip(sources, targets):
            values = _weights(module)
            if kind == "conv":
                values[0] = values[0].permute(2, 3, 1, 0)
            elif kind == "dense":
                values[0] = torch.from_numpy(keras_dense_kernel(values[0], flattened[layer.name]))
            values = [value.numpy() for value in values]
            shapes = [tuple(weight.shape) for weight in layer.weights], [value.shape for value in values]
            if shapes[0] != shapes[1]:
                raise BenchmarkMismatch(f"keras {model.name} {layer.name}: weights of shapes {shapes[0]}, "
                                        f"cnnspec's there {shapes[1]}")
            layer.set_weights(values)


def start_logits(task: Task, images: int = 32) -> dict[str, np.ndarray]:
    """Each model builder's output on the first test images before training, in eval
    mode, as log-probabilities (a Keras model that ends in a softmax gives probabilities)."""
    batch = task.normalized(task.test_images[:images])
    outputs = {}
    for name, model in (("cnnspec", cnnspec_model(task)), ("torch", torch_model(task))):
        with torch.no_grad():
            outputs[name] = torch.log_softmax(model.eval()(torch.from_numpy(batch)), 1).numpy()
    model = keras_model(task)
    predicted = torch.as_tensor(model(batch.transpose(0, 2, 3, 1).copy(), training=False)).detach().cpu().float()
    outputs["keras"] = (torch.log_softmax(predicted, 1) if keras_logits(model) else predicted.log()).numpy()
    return outputs


def check_same_start(task: Task, tolerance: float = 1e-4) -> float:
    """Stops the benchmark unless cnnspec, the hand-written torch module (Lightning and
    plain) and Keras give the same outputs from their copied initial weights; returns
    the largest difference."""
    outputs = start_logits(task)
    worst = max(float(np.abs(outputs[name] - outputs["cnnspec"]).max()) for name in ("torch", "keras"))
    if not worst <= tolerance:
        listed = ", ".join(f"{name} {float(np.abs(out - outputs['cnnspec']).max()):.2e}" for name, out in outputs.items())
        raise BenchmarkMismatch(f"{task.model}: the frameworks do not start from the same weights: largest "
                                f"log-probability difference to cnnspec {listed} (> {tolerance:g})")
    return worst

def torch_counts(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked"))
    return trainable, buffers


def keras_counts(model) -> tuple[int, int]:
    return (sum(int(np.prod(w.shape)) for w in model.trainable_weights),
            sum(int(np.prod(w.shape)) for w in model.non_trainable_weights))


def parameter_counts(task: Task) -> dict[str, tuple[int, int]]:
    """(trainable, non-trainable) per framework; raises when they differ."""
    counts = {"cnnspec": torch_counts(cnnspec_model(task)), "keras": keras_counts(keras_model(task))}
    counts["lightning"] = counts["plain"] = torch_counts(torch_model(task))  # the same nn.Module
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{name} {t:,} trainable + {n:,} non-trainable" for name, (t, n) in counts.items())
        raise BenchmarkMismatch(f"{task.model}: parameter counts differ ({listed}); not the same network")
    return counts


# ---------------------------------------------------------------- the whole pipeline, end to end

def copy_working_tree(destination: Path) -> None:
    """The files git would commit, in a fresh repository (as the end-to-end test does)."""
    import shutil
    import subprocess

    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=bench", "-c", "user.email=bench@cnnspec.invalid", "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=destination, check=True)


def write_fashion_subset(task: Task, folder: Path) -> None:
    """The task's training and test images as Fashion-MNIST's four idx .gz files, so
    that the pipeline downloads, prepares and trains exactly what the other runs train."""
    import gzip

    arrays = {"train-images-idx3-ubyte.gz": (task.train_images[:, 0], 0x803),
              "train-labels-idx1-ubyte.gz": (task.train_labels, 0x801),
              "t10k-images-idx3-ubyte.gz": (task.test_images[:, 0], 0x803),
              "t10k-labels-idx1-ubyte.gz": (task.test_labels, 0x801)}
    for name, (array, magic) in arrays.items():
        header = np.array([magic, *array.shape], dtype=">u4").tobytes()
        with gzip.open(folder / name, "wb") as file:
            file.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


TRAIN_STAGE_TIMES = re.compile(r"first step ([\d.]+)s \(includes compile\), rest ([\d.]+)s")


def dvc_repro(model: str, task: Task) -> dict:
    """Wall seconds of `dvc repro` (download from a local folder holding the task's
    images as Fashion-MNIST files, preprocess without a validation split, train with the
    shared recipe, evaluate on the test images, plot) in a copy of this repository, and
    the train stage's own training seconds: the difference is what the pipeline adds.
    The stages run with this process's torch thread count (OMP_NUM_THREADS)."""
    import subprocess

    import yaml

    from cnnspec.data.download import md5_of

    with tempfile.TemporaryDirectory() as repo, tempfile.TemporaryDirectory() as images:
        repo, images = Path(repo), Path(images)
        copy_working_tree(repo)
        write_fashion_subset(task, images)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        md5 = {name: md5_of(images / name) for name in get_dataset("fashion-mnist").files}
        params["data"].update({"dataset": "fashion-mnist", "url": images.resolve().as_uri() + "/",
                               "md5": md5, "val_split": 0.0})
        params["model"]["spec"] = f"specs/{model}.yaml"
        params["train"] = {**cnnspec_params(task), "device": str(task.device)}
        params["evaluate"]["tta"] = "none"
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                   DVC_NO_ANALYTICS="1", PYTHONPATH=str(repo), OMP_NUM_THREADS=str(torch.get_num_threads()))
        started = time.perf_counter()
        done = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise BenchmarkMismatch(f"dvc repro failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        metrics = json.loads((repo / "metrics" / "eval.json").read_text())
    times = TRAIN_STAGE_TIMES.search(done.stdout + done.stderr)
    train_seconds = float(times[1]) + float(times[2]) if times else None
    return {"model": model, "seconds": seconds, "train_seconds": train_seconds,
            "test_accuracy": metrics.get("accuracy"), "train_images": len(task.train_labels),
            "test_images": len(task.test_labels), "epochs": task.epochs, "batch": task.batch}


# ---------------------------------------------------------------- running and reporting

RUNNERS = {"cnnspec": run_cnnspec, "keras": run_keras, "lightning": run_lightning, "plain": run_plain}


def one_run(framework: str, task: Task, repeat: int) -> Run:
    with PeakMemory(task.device) as memory:
        ends, accuracies = RUNNERS[framework](task)
    if len(ends) != task.epochs or len(accuracies) != task.epochs:
        raise BenchmarkMismatch(f"{framework} {task.model}: {len(ends)} epoch times and {len(accuracies)} "
                                f"accuracies for {task.epochs} epochs")
    return Run(framework, task.model, repeat, [float(e) for e in ends], [float(a) for a in accuracies],
               memory.peak, len(task.train_labels))


def interleaved(tasks: list[Task], frameworks: list[str], repeats: int) -> list[Run]:
    runs = []
    for repeat in range(repeats):
        order = frameworks[repeat % len(frameworks):] + frameworks[:repeat % len(frameworks)]
        for task in tasks:
            for framework in order:
                run = one_run(framework, task, repeat)
                runs.append(run)
                print(f"repeat {repeat + 1}/{repeats} {task.model} {framework}: epochs "
                      + " ".join(f"{s:.1f}s" for s in run.epoch_seconds) + ", test accuracy "
                      + " ".join(f"{a:.4f}" for a in run.test_accuracy), file=sys.stderr, flush=True)
    return runs


@dataclass
class Row:
    model: str
    framework: str
    params: int
    buffers: int
    epoch_seconds: float  # median
    epoch_seconds_min: float
    epoch_seconds_max: float
    images_per_second: float
    seconds_to_target: float | None  # median over the repeats that reached it
    reached: int  # repeats that reached the target
    final_accuracy: float  # median over repeats
    peak_memory: int  # bytes, max over repeats
    ratio_epoch: float | None = None  # this / cnnspec, seconds per epoch
    ratio_to_target: float | None = None
    notes: list[str] = field(default_factory=list)


def summarize(runs: list[Run], counts: dict, target: float, tolerance: float) -> list[Row]:
    rows = []
    for model in dict.fromkeys(run.model for run in runs):
        by_framework = {}
        for run in runs:
            if run.model == model:
                by_framework.setdefault(run.framework, []).append(run)
        for framework, mine in by_framework.items():
            epochs = [s for run in mine for s in run.epoch_seconds]
            reached = [s for run in mine if (s := run.seconds_to(target)) is not None]
            median_epoch = statistics.median(epochs)
            rows.append(Row(model, framework, *counts[model][framework], median_epoch, min(epochs), max(epochs),
                            mine[0].images_per_epoch / median_epoch,
                            statistics.median(reached) if reached else None, len(reached),
                            statistics.median(run.test_accuracy[-1] for run in mine),
                            max(run.peak_memory for run in mine)))
        mine = [row for row in rows if row.model == model]
        for row in mine:
            if "cnnspec" in by_framework:
                row.ratio_epoch, row.ratio_to_target = paired_ratios(by_framework[row.framework],
                                                                     by_framework["cnnspec"], target)
        accuracies = [row.final_accuracy for row in mine]
        if max(accuracies) - min(accuracies) > tolerance:
            for row in mine:
                row.notes.append(f"final accuracies differ by {100 * (max(accuracies) - min(accuracies)):.1f} "
                                 f"points (> {100 * tolerance:g})")
    return rows


def paired_ratios(runs: list[Run], base_runs: list[Run], target: float) -> tuple[float, float | None]:
    """Median over repeats of this framework's time / cnnspec's time in the same repeat
    (all epochs; and to the target where both reached it): load that drifts between
    repeats on a shared machine cancels within each pair."""
    base = {run.repeat: run for run in base_runs}
    pairs = [(run, base[run.repeat]) for run in runs if run.repeat in base]
    epochs = statistics.median(run.epoch_ends[-1] / other.epoch_ends[-1] for run, other in pairs)
    reached = [run.seconds_to(target) / other.seconds_to(target) for run, other in pairs
               if run.seconds_to(target) is not None and other.seconds_to(target) is not None]
    return epochs, statistics.median(reached) if reached else None


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_table(rows: list[Row], target: float, repeats: int) -> list[str]:
    lines = ["| model | framework | params (+ buffers) | s/epoch median (min-max) | images/s | "
             f"s to {100 * target:g}% test acc | final test acc | peak memory | s/epoch vs cnnspec | "
             f"to {100 * target:g}% vs cnnspec |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        to_target = ("not reached" if row.seconds_to_target is None else
                     f"{row.seconds_to_target:.1f}" + (f" ({row.reached}/{repeats})" if row.reached < repeats else ""))
        lines.append(f"| {row.model} | {row.framework} | {row.params:,} (+{row.buffers:,}) | "
                     f"{row.epoch_seconds:.2f} ({row.epoch_seconds_min:.2f}-{row.epoch_seconds_max:.2f}) | "
                     f"{row.images_per_second:,.0f} | {to_target} | {100 * row.final_accuracy:.2f}% | "
                     f"{row.peak_memory / 2**20:,.0f} MiB | {_ratio(row.ratio_epoch)} | "
                     f"{_ratio(row.ratio_to_target)} |")
    return lines


def settings(args) -> dict:
    if args.quick:
        return {"train_images": 512, "test_images": 256, "epochs": 1, "repeats": 1, "models": ["simcnn"],
                "target": 0.5}
    return {"train_images": 6_400, "test_images": 2_000, "epochs": 3, "repeats": 3,
            "models": ["simcnn", "ironhack_cnn"], "target": 0.80}


def profile(task: Task, frameworks: list[str], rows: int = 12) -> dict:
    """Where one epoch's time goes, per framework (the main process only: DataLoader
    workers are not seen). A warm-up epoch runs first, unprofiled."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    task, tables = replace(task, epochs=1), {}
    for framework in frameworks:
        RUNNERS[framework](task)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if task.device.type == "cuda" else [])
        with profiler(activities=activities) as recorded:
            started = time.perf_counter()
            RUNNERS[framework](task)
            seconds = time.perf_counter() - started
        tables[framework] = recorded.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
        print(f"\n{framework}, {task.model}, one epoch of {len(task.train_labels):,} images: {seconds:.2f} s "
              f"(profiled)\n{tables[framework]}")
    return tables


def reprint(path: Path, target: float | None, tolerance: float) -> list[Row]:
    saved = json.loads(Path(path).read_text())
    runs = [Run(**run) for run in saved["runs"]]
    counts = {}
    for row in saved["rows"]:
        counts.setdefault(row["model"], {})[row["framework"]] = (row["params"], row["buffers"])
    target = target if target is not None else saved["settings"]["target"]
    rows = summarize(runs, counts, target, tolerance)
    print("\n".join(markdown_table(rows, target, saved["settings"]["repeats"])))
    return rows


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 training / 256 test images, 1 epoch, simcnn")
    parser.add_argument("--device", default="cpu", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--data", type=Path, default=DEBIAN_FOLDER, help="folder of the four idx .gz files")
    parser.add_argument("--models", nargs="+", choices=MODELS)
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--train-images", type=int, help="the first N training images (0: all 60,000)")
    parser.add_argument("--test-images", type=int, help="the first N test images (default: all 10,000)")
    parser.add_argument("--batch", type=int, default=64, help="seed 000's batch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (Keras' default)")
    parser.add_argument("--hflip", action="store_true", help="random horizontal flips, in every framework")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (lightning, plain)")
    parser.add_argument("--target", type=float, help="the test accuracy whose time is reported")
    parser.add_argument("--accuracy-tolerance", type=float, default=0.01)
    parser.add_argument("--threads", type=int, help="torch threads of the process (default: torch's own); "
                        "1 keeps a shared machine from stalling every step at OpenMP barriers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows and every run to this file")
    parser.add_argument("--from-json", type=Path, help="print the table of an earlier run's --json file "
                        "(with --target, --accuracy-tolerance) instead of training")
    parser.add_argument("--profile", nargs="+", choices=FRAMEWORKS,
                        help="instead of the benchmark: one epoch of the first model per framework under "
                             "torch.profiler, the operators that took the most time")
    parser.add_argument("--dvc-repro", action="store_true",
                        help="also time the whole pipeline (dvc repro) for each model on the same images, "
                        "against the train stage's own training time")
    args = parser.parse_args(argv)
    if args.from_json:
        return reprint(args.from_json, args.target, args.accuracy_tolerance)
    chosen = settings(args)
    chosen.update({key: value for key in chosen if (value := getattr(args, key)) is not None})
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    frameworks = list(dict.fromkeys(["cnnspec", *args.frameworks]))
    data = fashion_task_data(args.data, chosen["train_images"], chosen["test_images"], args.batch)
    tasks = [Task(model=model, **data, epochs=chosen["epochs"], batch=args.batch, lr=args.lr, hflip=args.hflip,
                  seed=args.seed, device=device, workers=args.workers) for model in chosen["models"]]
    if "keras" in frameworks:
        import_keras(device)
    if "lightning" in frameworks:
        import pytorch_lightning  # noqa: F401  (imported before the first timed run)
    if args.profile:
        return profile(tasks[0], args.profile)
    counts = {task.model: parameter_counts(task) for task in tasks}
    for task in tasks:
        print(f"{task.model}: cnnspec, torch (lightning, plain) and keras start from the same weights: "
              f"outputs on 32 test images within {check_same_start(task):.1e}", flush=True)
    runs = interleaved(tasks, frameworks, chosen["repeats"])
    rows = summarize(runs, counts, chosen["target"], args.accuracy_tolerance)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores")
    print(f"\nFashion-MNIST, {len(data['train_labels']):,} training / {len(data['test_labels']):,} test images, "
          f"{chosen['epochs']} epochs, batch {args.batch}, Adam lr {args.lr:g}, "
          f"{'hflip' if args.hflip else 'no augmentation'}, {chosen['repeats']} interleaved repeats, {where}")
    print("\n".join(markdown_table(rows, chosen["target"], chosen["repeats"])))
    for model in counts:
        print(f"{model}: parameter counts equal in all four: {counts[model]['cnnspec'][0]:,} trainable + "
              f"{counts[model]['cnnspec'][1]:,} non-trainable")
    for note in dict.fromkeys(f"{row.model}: {note}" for row in rows for note in row.notes):
        print(f"FLAG {note}")
    pipelines = []
    if args.dvc_repro:
        for task in tasks:
            figure = dvc_repro(task.model, task)
            in_process = statistics.median(run.epoch_ends[-1] for run in runs
                                           if run.model == task.model and run.framework == "cnnspec")
            figure["cnnspec_fit_seconds"] = in_process
            pipelines.append(figure)
            trained = "?" if figure["train_seconds"] is None else f"{figure['train_seconds']:.1f} s"
            print(f"{task.model}: dvc repro end to end (download {figure['train_images']:,} training / "
                  f"{figure['test_images']:,} test images from a local folder, preprocess, train "
                  f"{figure['epochs']} epochs, evaluate, plot): {figure['seconds']:.1f} s; of it the train "
                  f"stage's training {trained} (without per-epoch validation; in this process cnnspec's "
                  f"fit with a test evaluation each epoch took {in_process:.1f} s); test accuracy "
                  f"{figure['test_accuracy']}")
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(row) for row in rows], "runs": [asdict(run) for run in runs],
                                         "dvc_repro": pipelines,
                                         "settings": {**chosen, "batch": args.batch, "lr": args.lr,
                                                      "hflip": args.hflip, "device": str(device),
                                                      "workers": args.workers}}, indent=1))
    return rows


if __name__ == "__main__":
    main()
