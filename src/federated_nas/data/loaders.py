"""Client data loaders that index whole batches at once.

The client datasets are in-memory tensors, so a batch is one fancy-index of them rather than
``batch_size`` calls to ``__getitem__`` and a collate: no worker processes, no per-sample work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

if TYPE_CHECKING:
    from lightning.pytorch.utilities import CombinedLoader


def batch_loader(dataset: TensorDataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Batches of ``dataset``; shuffled by a generator of its own so the order depends only on ``seed``."""
    if shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    drop_last = shuffle and len(dataset) > batch_size  # a ragged last batch only adds noise to training
    return DataLoader(dataset, batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last=drop_last))


def paired_loader(first: TensorDataset, second: TensorDataset, roles: tuple[str, str], batch_size: int,
                  seed: int) -> CombinedLoader:
    """Batches of ``first`` paired with batches of ``second`` as ``{role: batch}``; the shorter one cycles.

    FedNAS pairs (train, val) for its two-level update; FedMetaNAS pairs (support, query) tasks.
    """
    from lightning.pytorch.utilities import CombinedLoader  # with the client's work: Lightning is slow to import

    loaders = {roles[0]: batch_loader(first, batch_size, shuffle=True, seed=seed),
               roles[1]: batch_loader(second, batch_size, shuffle=True, seed=seed + 1)}
    return CombinedLoader(loaders, mode="max_size_cycle")
