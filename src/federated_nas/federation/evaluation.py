"""Accuracy and loss of a model on a dataset, in eval mode and without gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from federated_nas.data.loaders import batch_loader


@torch.no_grad()
def evaluate(model: nn.Module, dataset: TensorDataset, batch_size: int = 500,
             device: torch.device | str = "cpu", limit: int | None = None) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over the first ``limit`` samples (all when None)."""
    if limit is not None and limit < len(dataset):
        dataset = TensorDataset(*(t[:limit] for t in dataset.tensors))
    was_training = model.training
    model.eval()
    correct, loss_sum, seen = 0, 0.0, 0
    try:
        for x, y in batch_loader(dataset, batch_size, shuffle=False):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += len(y)
    finally:
        model.train(was_training)
    return correct / max(seen, 1), loss_sum / max(seen, 1)
