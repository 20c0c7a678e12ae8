"""keras: Keras 3 on its torch backend, `model.fit` on numpy arrays (the seeds' API),
one unshuffled fit call per epoch, the model written with keras layers mirroring the
spec and given cnnspec's initial weights in Keras' layouts. With --recipes own: Adam()
with Keras' defaults and the seeds' callbacks, ReduceLROnPlateau and EarlyStopping on
val_loss, kept across the per-epoch fit calls as one fit call keeps them."""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
from torch import nn

from benchmarks.versus_peers.cnnspec_train import cnnspec_model
from benchmarks.versus_peers.data import (
    BenchmarkMismatch,
    Task,
    cnnspec_epoch_orders,
    synchronize,
)
from benchmarks.versus_peers.torch_models import weights


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
    elif task.model == "fashion_cpu":
        for filters, convs in ((32, 1), (48, 2), (96, 2)):  # the stem, then the two conv groups
            for conv in range(convs):
                x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
                x = layers.MaxPooling2D(2)(x) if conv == 0 else x  # max pool before batch norm
                x = layers.ReLU()(layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x))  # torch's 0.1, 1e-5
        x = layers.GlobalMaxPooling2D()(x)
        outputs = layers.Dense(len(task.classes))(x)  # logits
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


def across_fit_calls(keras, callback_class, **options):
    """A Keras callback that lives through one fit call per epoch as it would through one
    fit call of all epochs: its on_train_begin (which resets its counters) runs in the
    first call only, its on_train_end (EarlyStopping restores the best weights there)
    only when the run ends: after the last epoch, or when a callback stopped training."""

    class AcrossFitCalls(callback_class):
        begun, last_fit = False, False

        def on_train_begin(self, logs=None):
            if not self.begun:
                self.begun = True
                super().on_train_begin(logs)

        def on_train_end(self, logs=None):
            if self.last_fit or self.model.stop_training:
                super().on_train_end(logs)

    return AcrossFitCalls(**options)


def own_callbacks(keras) -> list:
    """The seeds' callbacks (own_recipes.KERAS_PLATEAU, KERAS_EARLY_STOPPING)."""
    from benchmarks.versus_peers.own_recipes import KERAS_EARLY_STOPPING, KERAS_PLATEAU

    return [across_fit_calls(keras, keras.callbacks.ReduceLROnPlateau, **KERAS_PLATEAU),
            across_fit_calls(keras, keras.callbacks.EarlyStopping, **KERAS_EARLY_STOPPING)]


def run_keras(task: Task) -> tuple[list[float], list[float]] | tuple[list[float], list[float], float]:
    """(epoch ends, test accuracies); with --recipes own, when EarlyStopping restored an
    earlier epoch's weights, also the test accuracy of those (the weights it ends with)."""
    keras = import_keras(task.device)
    model = keras_model(task)
    own = task.recipe is not None
    optimizer = (keras.optimizers.Adam() if own else  # Keras' defaults: lr 1e-3, eps 1e-7
                 keras.optimizers.Adam(learning_rate=task.lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8))
    callbacks = own_callbacks(keras) if own else []
    model.compile(optimizer=optimizer,
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
        for callback in callbacks:
            callback.last_fit = epoch == len(orders) - 1
        # One fit call per epoch on the images in cnnspec's order, unshuffled: the gather
        # stands in for the shuffle fit(shuffle=True) does inside the timed call, so it is timed too.
        history = model.fit(x_train[order], task.train_labels[order], batch_size=task.batch,
                            initial_epoch=epoch, epochs=epoch + 1, shuffle=False,
                            validation_data=(x_test, task.test_labels), validation_batch_size=task.eval_batch,
                            callbacks=[EpochEnds(), *callbacks], verbose=0)
        accuracies += history.history["val_accuracy"]
        if model.stop_training:  # EarlyStopping
            break
    synchronize(task.device)
    if own and callbacks[1].best_weights is not None:  # restored at the end of the run
        return ends, accuracies, accuracies[callbacks[1].best_epoch]
    return ends, accuracies


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
            values = weights(module)
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


def keras_counts(model) -> tuple[int, int]:
    return (sum(int(np.prod(w.shape)) for w in model.trainable_weights),
            sum(int(np.prod(w.shape)) for w in model.non_trainable_weights))
