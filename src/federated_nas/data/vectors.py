"""Vector (tabular) datasets held in memory as ``[N, features]`` float tensors.

The bundled sets come from scikit-learn, which ships them inside the package, so they load
offline. Features are standardised with the train split's statistics only (the test split
never informs training), on a fixed, seeded, class-stratified train/test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from federated_nas.errors import ConfigError

SKLEARN_LOADERS = {"digits": "load_digits", "breast_cancer": "load_breast_cancer", "wine": "load_wine"}


@dataclass
class VectorDataset:
    """Whole dataset in memory; ``in_channels`` is the feature count, the name every model builder takes."""

    name: str
    train_x: torch.Tensor  # float32 [N, features], standardised
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> None:
        return None


def load_tabular_dataset(name: str = "digits", test_fraction: float = 0.25, split_seed: int = 0) -> VectorDataset:
    """A scikit-learn bundled set (``digits``: 64 features, 10 classes; ``breast_cancer``; ``wine``)."""
    if name not in SKLEARN_LOADERS:
        raise ConfigError(f"dataset.name={name!r} is not a bundled tabular set; "
                          f"choose one of {', '.join(SKLEARN_LOADERS)}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"dataset.test_fraction must be in (0, 1), got {test_fraction}")
    import sklearn.datasets  # deferred: only vector runs need scikit-learn

    features, labels = getattr(sklearn.datasets, SKLEARN_LOADERS[name])(return_X_y=True)
    train, test = stratified_split(labels, test_fraction, split_seed)
    mean = features[train].mean(0)
    std = features[train].std(0)
    std[std == 0] = 1.0  # constant features (digits' border pixels) stay zero instead of dividing by 0
    standardised = (features - mean) / std
    return _vector_dataset(name, standardised, labels, train, test)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices with each class split in the same proportion; a function of ``seed`` alone."""
    rng = np.random.default_rng([seed, 3])
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(test_fraction * len(members)))
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def make_signal_dataset(num_features: int = 8, num_classes: int = 4, train_per_class: int = 40,
                        test_per_class: int = 10, signal: float = 2.0, seed: int = 0,
                        name: str = "synthetic_vector") -> VectorDataset:
    """Tiny learnable vectors for smoke tests: standard normal noise, plus ``signal`` on feature ``label % F``.

    The federated NAS tutorial's generator: one feature carries the class, so even a linear
    layer can learn it, and a broken pipeline shows as chance accuracy.
    """
    if num_features < 1 or num_classes < 2:
        raise ConfigError(f"dataset needs num_features >= 1 and num_classes >= 2, got {num_features}, {num_classes}")
    rng = np.random.default_rng(seed)

    def sample(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
        features = rng.normal(size=(len(labels), num_features))
        features[np.arange(len(labels)), labels % num_features] += signal
        return features, labels

    (train_x, train_y), (test_x, test_y) = sample(train_per_class), sample(test_per_class)
    features, labels = np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y])
    return _vector_dataset(name, features, labels, np.arange(len(train_y)), np.arange(len(train_y), len(labels)))


def make_planted_xor_dataset(num_features: int = 8, train_size: int = 2000, test_size: int = 500, seed: int = 0,
                             name: str = "planted_xor") -> VectorDataset:
    """A task with a planted architecture: the label is sign(x_0) XOR sign(x_1), the other features are noise.

    No chain of ``skip_connect`` and ``linear`` layers solves it: their output is linear in x, and
    the affine-free LayerNorm after each layer only rescales it, so the linear classifier draws one
    half-plane through the origin, which XOR defeats (50% accuracy). One non-linear op anywhere
    (``linear_relu``, ``linear_tanh``, ``mlp2``) solves it. A search that moves alpha the right way
    puts its probability on those ops: ``scripts/bench_planted.py`` measures how much, per method.
    """
    if num_features < 2 or train_size < 2 or test_size < 1:
        raise ConfigError(f"dataset needs num_features >= 2, train_size >= 2 and test_size >= 1, got "
                          f"{num_features}, {train_size}, {test_size}")
    rng = np.random.default_rng([seed, 5])
    features = rng.normal(size=(train_size + test_size, num_features))
    labels = ((features[:, 0] > 0) ^ (features[:, 1] > 0)).astype(np.int64)
    return _vector_dataset(name, features, labels, np.arange(train_size),
                           np.arange(train_size, train_size + test_size))


def _vector_dataset(name: str, features: np.ndarray, labels: np.ndarray, train: np.ndarray,
                    test: np.ndarray) -> VectorDataset:
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    return VectorDataset(name, x[train].contiguous(), y[train], x[test].contiguous(), y[test],
                         num_classes=int(y.max()) + 1)
