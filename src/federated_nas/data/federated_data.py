"""Turn one in-memory dataset into per-client train/val/test (and optional holdout) splits.

Each client's local val split drives its architecture update and its local test
split measures personalized accuracy; the dataset's own test split stays with the
server, so the search never looks at the global test set. A fourth fraction holds out
part of each client's share that no method trains on: the NAS methods fit alpha on val,
so a tuning protocol scores their settings on the holdout instead.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from federated_nas.data.datasets import ImageDataset
from federated_nas.data.vectors import VectorDataset
from federated_nas.data.partitions import class_counts as count_classes
from federated_nas.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test", "holdout")


@dataclass
class ClientData:
    """One client's local data, already split."""

    client_id: int
    train: TensorDataset  # local train split
    val: TensorDataset  # local val (drives the architecture update; never the global test set)
    test: TensorDataset  # local test (personalized accuracy)
    holdout: TensorDataset | None = None  # never trained on (federation.split's 4th fraction): for tuning
    # split name -> indices into the dataset's train split, kept so the split can be saved and audited
    indices: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        """Size of the local train split: the aggregation weight N_k."""
        return len(self.train)


@dataclass
class FederatedData:
    """All clients' data plus what the server keeps and what is logged about the split."""

    clients: list[ClientData]
    global_test: TensorDataset  # the dataset's own test split, kept by the server
    num_classes: int
    in_channels: int  # image channels, or the feature count of vector data
    image_size: int | None  # None for vector data
    partition: list[np.ndarray]  # indices into the train split, per client
    class_counts: np.ndarray  # [classes, clients] of each client's whole share

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample: ``(C, H, W)`` for images, ``(features,)`` for vector data."""
        return tuple(self.global_test.tensors[0].shape[1:])

    def save_partition(self, directory) -> list[Path]:
        """Write partition.json and partition_counts.csv so a run's split can be inspected (the run draws it)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path = _write_text_atomically(directory / "partition.json", self._partition_json())
        csv_path = _write_text_atomically(directory / "partition_counts.csv", self._counts_csv())
        return [json_path, csv_path]

    def _partition_json(self) -> str:
        clients = [
            {"client_id": client.client_id,
             **{name: client.indices[name].tolist() for name in SPLIT_NAMES if name in client.indices}}
            for client in self.clients
        ]
        return json.dumps({"num_clients": len(self.clients), "num_classes": self.num_classes,
                           "clients": clients})

    def _counts_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["class", *(f"client_{k}" for k in range(self.class_counts.shape[1]))])
        for label, row in enumerate(self.class_counts):
            writer.writerow([label, *(int(count) for count in row)])
        return buffer.getvalue()


def build_federated_data(
    dataset: ImageDataset | VectorDataset,
    partitioner,
    num_clients: int,
    seed: int,
    split: Sequence[float] = (0.8, 0.1, 0.1),
) -> FederatedData:
    """Partition the train split among clients and cut each client's share into train/val/test(/holdout)."""
    fractions = _check_split(split)
    train_labels = dataset.train_y.numpy()
    partition = partitioner(train_labels, num_clients, seed)
    # A separate stream, so changing the split fractions never changes the partition.
    rng = np.random.default_rng([seed, 1])
    clients = [
        _make_client(client_id, rng.permutation(share), fractions, dataset)
        for client_id, share in enumerate(partition)
    ]
    return FederatedData(
        clients=clients,
        global_test=TensorDataset(dataset.test_x, dataset.test_y),
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
        image_size=dataset.image_size,
        partition=partition,
        class_counts=count_classes(train_labels, partition, dataset.num_classes),
    )


def _check_split(split: Sequence[float]) -> tuple[float, ...]:
    fractions = tuple(float(value) for value in split)
    valid = (
        len(fractions) in (3, 4)
        and all(value >= 0 for value in fractions)
        and fractions[0] > 0
        and math.isclose(sum(fractions), 1.0, abs_tol=1e-6)
    )
    if not valid:
        raise ConfigError(
            f"federation.split={list(fractions)} must be three fractions (train, val, test), or four with a "
            f"holdout, >= 0 with train > 0 that sum to 1"
        )
    return fractions


def _split_sizes(num_samples: int, fractions: tuple[float, ...]) -> list[int]:
    """Largest-remainder rounding, then give every part with a positive fraction at least one sample if possible."""
    exact = [fraction * num_samples for fraction in fractions]
    sizes = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in by_remainder[: num_samples - sum(sizes)]:
        sizes[i] += 1
    for i, fraction in enumerate(fractions):  # train first, so it wins when samples are scarce
        largest = max(range(len(sizes)), key=lambda j: sizes[j])
        if fraction > 0 and sizes[i] == 0 and sizes[largest] > 1:
            sizes[largest] -= 1
            sizes[i] += 1
    return sizes


def _make_client(client_id: int, shuffled: np.ndarray, fractions, dataset: ImageDataset | VectorDataset) -> ClientData:
    sizes = _split_sizes(len(shuffled), fractions)
    bounds = np.cumsum(sizes)[:-1]
    indices = {name: np.sort(part).astype(np.int64)
               for name, part in zip(SPLIT_NAMES, np.split(shuffled, bounds))}
    subsets = {name: _subset(dataset.train_x, dataset.train_y, part) for name, part in indices.items()}
    return ClientData(client_id=client_id, indices=indices, **subsets)


def _subset(inputs: torch.Tensor, labels: torch.Tensor, indices: np.ndarray) -> TensorDataset:
    selector = torch.as_tensor(indices, dtype=torch.long)
    return TensorDataset(inputs[selector], labels[selector])


def _write_text_atomically(path: Path, text: str) -> Path:
    """Write via a temp file in the same folder and os.replace, so readers never see a partial file."""
    temp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # plain open keeps umask permissions
    try:
        temp_path.write_text(text, encoding="utf-8")
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return path
