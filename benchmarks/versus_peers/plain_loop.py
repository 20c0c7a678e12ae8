"""plain: a script in the style of torchvision's reference train.py: a Dataset that
converts and normalizes each image, a DataLoader with workers, a loop that reads
loss.item() every step, an evaluate() over a test DataLoader."""
from __future__ import annotations

import time

import torch
from torch import nn

from benchmarks.versus_peers import torch_models
from benchmarks.versus_peers.data import Task, adam, loaders


def run_plain(task: Task) -> tuple[list[float], list[float]]:
    model = torch_models.torch_model(task).to(task.device)
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
