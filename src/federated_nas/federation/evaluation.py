"""Accuracy and loss of a model on a dataset, in eval mode and without gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from federated_nas.data.loaders import batch_loader


def evaluate(model: nn.Module, dataset: TensorDataset, batch_size: int = 500,
             device: torch.device | str = "cpu", limit: int | None = None) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over the first ``limit`` samples (all when None)."""
    if limit is not None and limit < len(dataset):
        dataset = TensorDataset(*(t[:limit] for t in dataset.tensors))
    return evaluate_prefixes(model, dataset, [len(dataset)], batch_size, device)[0]


@torch.no_grad()
def evaluate_prefixes(model: nn.Module, dataset: TensorDataset, prefixes: list[int], batch_size: int = 500,
                      device: torch.device | str = "cpu") -> list[tuple[float, float]]:
    """(accuracy, mean cross-entropy) over the first n samples for each n of ``prefixes``, in one pass: the
    last round's sampled and full evaluations cost one. Where every prefix ends on a batch boundary (the
    presets' 2,000 images in batches of 500) the numbers are exactly those of ``evaluate(..., limit=n)``; a
    batch that a prefix ends inside is run as its two parts, which moves the loss by float rounding only."""
    ends = sorted({min(n, len(dataset)) for n in prefixes})
    totals: dict[int, tuple[float, float]] = {}
    was_training = model.training
    model.eval()
    correct, loss_sum, seen = 0, 0.0, 0
    try:
        for x, y in batch_loader(TensorDataset(*(t[:ends[-1]] for t in dataset.tensors)), batch_size, shuffle=False):
            cuts = [end - seen for end in ends if seen < end < seen + len(y)]
            for start, stop in zip([0, *cuts], [*cuts, len(y)]):
                xs, ys = x[start:stop].to(device), y[start:stop].to(device)
                logits = model(xs)
                loss_sum += float(F.cross_entropy(logits, ys, reduction="sum"))
                correct += int((logits.argmax(dim=1) == ys).sum())
                seen += len(ys)
                if seen in ends:
                    totals[seen] = (correct / max(seen, 1), loss_sum / max(seen, 1))
    finally:
        model.train(was_training)
    totals.setdefault(0, (0.0, 0.0))
    return [totals[min(n, len(dataset))] for n in prefixes]
