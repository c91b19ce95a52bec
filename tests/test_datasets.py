"""Dataset loading: offline lookup order, one-line errors, tensor conversion, synthetic data."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from federated_nas.data import load_image_dataset, make_synthetic_dataset
from federated_nas.errors import ConfigError, DataError

REAL_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX image file: magic 2051, then big-endian count, rows, columns, then uint8 pixels."""
    count, rows, columns = images.shape
    header = struct.pack(">IIII", 2051, count, rows, columns)
    path.write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes()))


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """IDX label file: magic 2049, then big-endian count, then uint8 labels."""
    header = struct.pack(">II", 2049, len(labels))
    path.write_bytes(gzip.compress(header + labels.astype(np.uint8).tobytes()))


@pytest.fixture
def fake_debian_dir(tmp_path):
    """A stand-in for the dataset-fashion-mnist package: 6 train and 4 test images."""
    directory = tmp_path / "debian"
    directory.mkdir()
    rng = np.random.default_rng(0)
    splits = {"train": 6, "t10k": 4}
    content = {}
    for prefix, count in splits.items():
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        write_idx_images(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx_labels(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
        content[prefix] = (images, labels)
    return directory, content


def test_unknown_name_raises_config_error():
    with pytest.raises(ConfigError, match=r"dataset\.name='xyz' is unknown; choose one of fashion_mnist"):
        load_image_dataset("xyz", "/nonexistent")


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "cifar10"])
def test_missing_data_without_download_raises_one_line_data_error(name, tmp_path):
    data_dir = tmp_path / "empty"
    data_dir.mkdir()
    with pytest.raises(DataError) as info:
        load_image_dataset(name, str(data_dir), download=False, debian_dir=str(tmp_path / "no-such-dir"))
    message = str(info.value)
    assert "\n" not in message
    assert name in message and str(data_dir) in message
    if name == "fashion_mnist":
        assert "apt-get install dataset-fashion-mnist" in message
        assert str(tmp_path / "no-such-dir") in message


def test_fashion_mnist_loads_from_debian_files(fake_debian_dir, tmp_path):
    debian_dir, content = fake_debian_dir
    data_dir = tmp_path / "data"
    dataset = load_image_dataset("fashion_mnist", str(data_dir), download=False, debian_dir=str(debian_dir))

    assert dataset.train_x.shape == (6, 1, 28, 28) and dataset.test_x.shape == (4, 1, 28, 28)
    assert dataset.train_x.dtype == torch.float32 and dataset.train_y.dtype == torch.int64
    assert (dataset.num_classes, dataset.in_channels, dataset.image_size) == (10, 1, 28)
    train_images, train_labels = content["train"]
    expected = (torch.as_tensor(train_images, dtype=torch.float32) / 255 - FASHION_MEAN) / FASHION_STD
    assert torch.allclose(dataset.train_x[:, 0], expected, atol=1e-5)
    assert np.array_equal(dataset.train_y.numpy(), train_labels)
    assert np.array_equal(dataset.test_y.numpy(), content["t10k"][1])

    raw_dir = data_dir / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    )  # unpacked into torchvision's layout, no temp files left behind


def test_unpacked_files_are_found_without_debian_dir(fake_debian_dir, tmp_path):
    debian_dir, _ = fake_debian_dir
    data_dir = tmp_path / "data"
    load_image_dataset("fashion_mnist", str(data_dir), download=False, debian_dir=str(debian_dir))
    again = load_image_dataset("fashion_mnist", str(data_dir), download=False, debian_dir=str(tmp_path / "gone"))
    assert len(again.train_y) == 6


def test_idx_files_are_read_as_torchvision_reads_them(fake_debian_dir, tmp_path):
    """The MNIST family's IDX files are read with numpy (torchvision's import costs a run's server over a
    second): the same tensors as torchvision's loader gives."""
    from federated_nas.data import datasets

    debian_dir, _ = fake_debian_dir
    data_dir = tmp_path / "data"
    ours = load_image_dataset("fashion_mnist", str(data_dir), download=False, debian_dir=str(debian_dir))
    spec = datasets.DATASETS["fashion_mnist"]
    theirs = datasets._to_image_dataset("fashion_mnist", spec, *datasets._try_torchvision(spec, data_dir, False, []))
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name


def test_a_truncated_idx_file_is_a_one_line_data_error(fake_debian_dir, tmp_path):
    debian_dir, _ = fake_debian_dir
    data_dir = tmp_path / "data"
    load_image_dataset("fashion_mnist", str(data_dir), download=False, debian_dir=str(debian_dir))
    images = data_dir / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError) as info:
        load_image_dataset("fashion_mnist", str(data_dir), download=False, debian_dir=str(tmp_path / "gone"))
    assert "\n" not in str(info.value) and str(data_dir) in str(info.value)


def test_synthetic_dataset_shapes_and_determinism():
    first = make_synthetic_dataset(num_classes=3, in_channels=2, image_size=5, train_per_class=7, test_per_class=2)
    again = make_synthetic_dataset(num_classes=3, in_channels=2, image_size=5, train_per_class=7, test_per_class=2)
    other = make_synthetic_dataset(num_classes=3, in_channels=2, image_size=5, train_per_class=7, seed=1)
    assert first.train_x.shape == (21, 2, 5, 5) and first.test_x.shape == (6, 2, 5, 5)
    assert first.train_x.dtype == torch.float32 and first.train_y.dtype == torch.int64
    assert np.array_equal(np.bincount(first.train_y.numpy()), [7, 7, 7])
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.test_y, again.test_y)
    assert not torch.equal(first.train_x, other.train_x)


def test_synthetic_dataset_is_learnable_by_nearest_class_mean():
    dataset = make_synthetic_dataset(seed=0)
    flat_train = dataset.train_x.flatten(1)
    means = torch.stack([flat_train[dataset.train_y == c].mean(0) for c in range(dataset.num_classes)])
    predictions = torch.cdist(dataset.test_x.flatten(1), means).argmin(1)
    assert (predictions == dataset.test_y).float().mean() > 0.95


@pytest.mark.skipif(not REAL_DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_debian_fashion_mnist_loads(tmp_path):
    dataset = load_image_dataset("fashion_mnist", str(tmp_path), download=False, debian_dir=str(REAL_DEBIAN_DIR))
    assert dataset.train_x.shape == (60000, 1, 28, 28)
    assert dataset.test_x.shape == (10000, 1, 28, 28)
    assert set(dataset.train_y.unique().tolist()) == set(range(10))
    assert abs(dataset.train_x.mean().item()) < 0.01
    assert abs(dataset.train_x.std().item() - 1.0) < 0.01
