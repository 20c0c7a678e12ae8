"""plain: a script in the style of torchvision's reference train.py: a Dataset that
converts and normalizes each image, a DataLoader with workers, a loop that reads
loss.item() every step, an evaluate() over a test DataLoader. With --recipes own: the
recipe's torch optimizer, OneCycleLR stepped every batch, label smoothing and the
Dataset's torchvision transforms, as Lightning gets them; fp32 on a CPU (the reference
autocasts on CUDA only, with --amp), NCHW."""
from __future__ import annotations

import time

import torch
from torch import nn

from benchmarks.versus_peers import own_recipes, torch_models
from benchmarks.versus_peers.data import Task, adam, loaders


def run_plain(task: Task) -> tuple[list[float], list[float]]:
    model = torch_models.torch_model(task).to(task.device)
    train_loader, test_loader = loaders(task)
    scheduler, dtype = None, None
    if task.recipe is None:
        criterion, optimizer = nn.CrossEntropyLoss(), adam(model, task)
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=task.recipe["loss"]["label_smoothing"])
        optimizer, scheduler = own_recipes.torch_optimizer(model.parameters(), task.recipe,
                                                           task.epochs * len(train_loader))
        dtype = own_recipes.plain_autocast(task.recipe, task.device)
    scaler = torch.amp.GradScaler(task.device.type, enabled=dtype is torch.float16)
    ends, accuracies = [], []
    started = time.perf_counter()
    for epoch in range(task.epochs):
        train_loader.sampler.set_epoch(epoch)
        model.train()
        running_loss = 0.0
        for images, labels in train_loader:
            images = images.to(task.device, non_blocking=True)
            labels = labels.to(task.device, non_blocking=True)
            with torch.autocast(task.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = criterion(model(images), labels)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
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
