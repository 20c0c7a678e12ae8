"""lightning: PyTorch Lightning, `Trainer.fit` with a LightningModule and DataLoaders
(defaults kept: checkpoint and logger in a temporary folder). With --recipes own: the
recipe's torch optimizer, OneCycleLR stepped every batch (configure_optimizers with
interval "step"), label smoothing, the Dataset's torchvision transforms and the
Trainer's bf16-mixed precision where the recipe asks for it (own_recipes.py)."""
from __future__ import annotations

import tempfile
import time

from torch import nn

from benchmarks.versus_peers import own_recipes, torch_models
from benchmarks.versus_peers.data import Task, adam, loaders, synchronize


def run_lightning(task: Task) -> tuple[list[float], list[float]]:
    import logging
    import warnings

    import pytorch_lightning as pl

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)  # "GPU available: ...", tips
    warnings.filterwarnings("ignore", module="pytorch_lightning")

    class Classifier(pl.LightningModule):
        def __init__(self, network):
            super().__init__()
            smoothing = 0.0 if task.recipe is None else task.recipe["loss"]["label_smoothing"]
            self.network, self.criterion = network, nn.CrossEntropyLoss(label_smoothing=smoothing)
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
            if task.recipe is None:
                return adam(self, task)
            optimizer, scheduler = own_recipes.torch_optimizer(self.parameters(), task.recipe,
                                                               int(self.trainer.estimated_stepping_batches))
            if scheduler is None:
                return optimizer
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    module = Classifier(torch_models.torch_model(task))
    train_loader, test_loader = loaders(task)
    precision = "32-true" if task.recipe is None else own_recipes.lightning_precision(task.recipe, task.device)
    with tempfile.TemporaryDirectory() as folder:
        trainer = pl.Trainer(max_epochs=task.epochs, accelerator="gpu" if task.device.type == "cuda" else "cpu",
                             devices=1, default_root_dir=folder, enable_progress_bar=False, precision=precision,
                             enable_model_summary=False)
        module.started = time.perf_counter()
        trainer.fit(module, train_loader, test_loader)
        synchronize(task.device)
    return module.ends, module.accuracies
