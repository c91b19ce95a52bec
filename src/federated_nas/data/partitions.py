"""Ways to split a labelled training set among federated clients.

Each partitioner is a small class so Hydra can build it from `_target_` plus its
settings; calling it with the labels, the number of clients and a seed returns one
sorted int64 index array per client. The parts are disjoint and together cover
every sample. Only `np.random.default_rng(seed)` is used, so a seed fully fixes
the split.
"""

from __future__ import annotations

import numpy as np

from federated_nas.errors import ConfigError


class IIDPartitioner:
    """Uniform random split: the homogeneous baseline every non-IID result is compared to."""

    name = "iid"

    def __init__(self) -> None:
        pass

    def __call__(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        labels = _check_inputs(labels, num_clients)
        rng = np.random.default_rng(seed)
        shuffled = rng.permutation(len(labels))
        return _sorted_parts(np.array_split(shuffled, num_clients))

    def describe(self) -> dict:
        return {"partition": self.name}


class DirichletPartitioner:
    """FedNAS's LDA split: client k gets a Dir(alpha) share p_{c,k} of every class c.

    Small alpha concentrates each class on few clients (strong label skew); large
    alpha approaches IID. Splits that leave a client with fewer than
    `min_client_size` samples are redrawn, because such clients cannot be split
    into train/val/test and make aggregation weights degenerate.
    """

    name = "dirichlet"

    def __init__(self, alpha: float = 0.5, min_client_size: int = 10, max_retries: int = 100) -> None:
        if not alpha > 0:
            raise ConfigError(f"partition.alpha must be > 0, got {alpha}")
        if min_client_size < 0:
            raise ConfigError(f"partition.min_client_size must be >= 0, got {min_client_size}")
        if max_retries < 1:
            raise ConfigError(f"partition.max_retries must be >= 1, got {max_retries}")
        self.alpha = float(alpha)
        self.min_client_size = int(min_client_size)
        self.max_retries = int(max_retries)

    def __call__(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        labels = _check_inputs(labels, num_clients)
        if self.min_client_size * num_clients > len(labels):
            raise ConfigError(self._too_small_message(len(labels), num_clients))
        rng = np.random.default_rng(seed)
        for _ in range(self.max_retries):
            parts = self._draw(labels, num_clients, rng)
            if min(len(part) for part in parts) >= self.min_client_size:
                return _sorted_parts(parts)
        raise ConfigError(self._too_small_message(len(labels), num_clients))

    def _draw(self, labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
        shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            proportions = rng.dirichlet(np.full(num_clients, self.alpha))
            cut_points = (np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
            for client, chunk in enumerate(np.split(members, cut_points)):
                shares[client].append(chunk)
        return [np.concatenate(chunks) for chunks in shares]

    def _too_small_message(self, num_samples: int, num_clients: int) -> str:
        return (
            f"partition.alpha={self.alpha} with partition.min_client_size={self.min_client_size} "
            f"gave no split of the {num_samples} training samples over {num_clients} clients in "
            f"{self.max_retries} tries; raise partition.alpha, lower partition.min_client_size "
            f"or federation.num_clients, or use a larger dataset"
        )

    def describe(self) -> dict:
        return {"partition": self.name, "alpha": self.alpha, "min_client_size": self.min_client_size}


class LabelSkewPartitioner:
    """Pathological non-IID split: every client holds exactly `classes_per_client` (tau) classes.

    Classes are dealt round-robin from a shuffled class list, so all classes are
    used when tau * clients >= classes, and each class's samples are divided
    evenly among the clients holding it.
    """

    name = "label_skew"

    def __init__(self, classes_per_client: int = 2) -> None:
        if classes_per_client < 1:
            raise ConfigError(f"partition.classes_per_client must be >= 1, got {classes_per_client}")
        self.classes_per_client = int(classes_per_client)

    def __call__(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        labels = _check_inputs(labels, num_clients)
        classes = np.unique(labels)
        self._check_fits(len(classes), num_clients)
        rng = np.random.default_rng(seed)
        holders = self._assign_classes(rng.permutation(classes), num_clients)
        shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for label, clients in holders.items():
            members = rng.permutation(np.flatnonzero(labels == label))
            if len(members) < len(clients):
                raise ConfigError(
                    f"partition.classes_per_client={self.classes_per_client}: class {label} has only "
                    f"{len(members)} samples for {len(clients)} clients; lower federation.num_clients"
                )
            for client, chunk in zip(clients, np.array_split(members, len(clients))):
                shares[client].append(chunk)
        return _sorted_parts([np.concatenate(chunks) for chunks in shares])

    def _check_fits(self, num_classes: int, num_clients: int) -> None:
        tau = self.classes_per_client
        if tau > num_classes:
            raise ConfigError(
                f"partition.classes_per_client={tau} exceeds the {num_classes} classes of the dataset"
            )
        if tau * num_clients < num_classes:
            # Refuse rather than silently drop the classes no client would hold.
            raise ConfigError(
                f"partition.classes_per_client={tau} with federation.num_clients={num_clients} "
                f"covers only {tau * num_clients} of the {num_classes} classes; "
                f"need classes_per_client * num_clients >= {num_classes}"
            )

    def _assign_classes(self, class_order: np.ndarray, num_clients: int) -> dict[int, list[int]]:
        """Client k takes the next tau classes of the (cyclic) shuffled list; returns class -> clients."""
        holders: dict[int, list[int]] = {int(label): [] for label in class_order}
        for client in range(num_clients):
            for slot in range(self.classes_per_client):
                label = int(class_order[(client * self.classes_per_client + slot) % len(class_order)])
                holders[label].append(client)
        return holders

    def describe(self) -> dict:
        return {"partition": self.name, "classes_per_client": self.classes_per_client}


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Samples of each class held by each client, shape [num_classes, num_clients]."""
    labels = np.asarray(labels)
    columns = [np.bincount(labels[part], minlength=num_classes) for part in parts]
    if not columns:
        return np.zeros((num_classes, 0), dtype=np.int64)
    return np.stack(columns, axis=1).astype(np.int64)


def _check_inputs(labels, num_clients: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"partition labels must be one-dimensional, got shape {labels.shape}")
    if num_clients < 1:
        raise ConfigError(f"federation.num_clients must be >= 1, got {num_clients}")
    if num_clients > len(labels):
        raise ConfigError(
            f"federation.num_clients={num_clients} exceeds the {len(labels)} samples of the dataset"
        )
    return labels


def _sorted_parts(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(part).astype(np.int64) for part in parts]
