"""Image datasets loaded once into memory as normalized tensors.

Federated clients slice the same few tensors many times per round, so the whole
dataset is converted up front instead of running per-sample PIL transforms.
Loading is offline-first: files already on disk are preferred over the network,
because compute nodes often have no internet access.
"""

from __future__ import annotations

import gzip
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from federated_nas.errors import ConfigError, DataError

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# The files torchvision's MNIST-family loaders expect in <root>/<Class>/raw/.
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass
class ImageDataset:
    """Whole dataset held in memory as normalized float tensors (fast client slicing, no per-sample PIL transforms)."""

    name: str
    train_x: torch.Tensor  # float32 [N, C, H, W], normalized with per-dataset mean/std
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int


@dataclass(frozen=True)
class DatasetSpec:
    """What is needed to find, load and normalize one torchvision dataset."""

    torchvision_class: str  # attribute name in torchvision.datasets
    folder: str  # where torchvision keeps the files under data_dir (for error messages)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    in_channels: int
    image_size: int
    debian_package: str | None = None


# Per-channel statistics of each training split, as commonly published.
DATASETS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec(
        "FashionMNIST", "FashionMNIST/raw", (0.2860,), (0.3530,), 10, 1, 28,
        debian_package="dataset-fashion-mnist",
    ),
    "mnist": DatasetSpec("MNIST", "MNIST/raw", (0.1307,), (0.3081,), 10, 1, 28),
    "cifar10": DatasetSpec(
        "CIFAR10", "cifar-10-batches-py",
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10, 3, 32,
    ),
    "cifar100": DatasetSpec(
        "CIFAR100", "cifar-100-python",
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100, 3, 32,
    ),
}


def load_image_dataset(
    name: str,
    data_dir: str,
    download: bool = True,
    debian_dir: str = DEBIAN_FASHION_MNIST_DIR,
) -> ImageDataset:
    """Load a dataset from disk (torchvision layout, then Debian package) or, last, the network."""
    spec = _spec_for(name)
    root = Path(data_dir).expanduser()
    failures: list[str] = []

    splits = _read_idx_files(spec, root)
    if splits is None:
        splits = _try_torchvision(spec, root, download=False, failures=failures)
    if splits is None and spec.debian_package is not None:
        splits = _try_debian_copy(spec, root, Path(debian_dir), failures)
    if splits is None and download:
        splits = _try_torchvision(spec, root, download=True, failures=failures)
    if splits is None:
        raise DataError(_missing_data_message(name, spec, root, Path(debian_dir), download, failures))
    return _to_image_dataset(name, spec, *splits)


def make_synthetic_dataset(
    num_classes: int = 4,
    in_channels: int = 1,
    image_size: int = 8,
    train_per_class: int = 40,
    test_per_class: int = 10,
    seed: int = 0,
    name: str = "synthetic",
) -> ImageDataset:
    """Tiny learnable dataset for tests: each class is a fixed random prototype plus small noise."""
    rng = np.random.default_rng(seed)
    shape = (in_channels, image_size, image_size)
    prototypes = rng.normal(size=(num_classes, *shape))

    def sample(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
        images = prototypes[labels] + 0.3 * rng.normal(size=(len(labels), *shape))
        return torch.as_tensor(images, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.int64)

    train_x, train_y = sample(train_per_class)
    test_x, test_y = sample(test_per_class)
    return ImageDataset(name, train_x, train_y, test_x, test_y, num_classes, in_channels, image_size)


def _spec_for(name: str) -> DatasetSpec:
    if name not in DATASETS:
        choices = ", ".join(DATASETS)
        raise ConfigError(f"dataset.name={name!r} is unknown; choose one of {choices}")
    return DATASETS[name]


def _try_torchvision(spec: DatasetSpec, root: Path, download: bool, failures: list[str]):
    """Return (train, test) torchvision datasets, or None after noting why they could not be loaded."""
    import torchvision  # deferred: importing torchvision is slow and tests mostly use synthetic data

    dataset_class = getattr(torchvision.datasets, spec.torchvision_class)
    try:
        train = dataset_class(root=str(root), train=True, download=download)
        test = dataset_class(root=str(root), train=False, download=download)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ... depending on cause
        if download:
            failures.append(f"download: {_one_line(exc)}")
        else:  # keep only the first sentence: torchvision's own hint says to pass download=True
            failures.append(f"{root / spec.folder}: {_one_line(exc).split('. ')[0]}")
        return None
    return train, test


def _try_debian_copy(spec: DatasetSpec, root: Path, debian_dir: Path, failures: list[str]):
    """Unpack the Debian package's IDX files into torchvision's layout, then load them offline."""
    sources = [debian_dir / f"{file_name}.gz" for file_name in _IDX_FILES]
    missing = [str(path) for path in sources if not path.is_file()]
    if missing:
        failures.append(f"{debian_dir}: missing {', '.join(Path(p).name for p in missing)}")
        return None
    raw_dir = root / spec.torchvision_class / "raw"
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
        for source in sources:
            _gunzip_atomically(source, raw_dir / source.stem)
    except (OSError, EOFError) as exc:
        failures.append(f"unpack {debian_dir} into {raw_dir}: {_one_line(exc)}")
        return None
    return _read_idx_files(spec, root) or _try_torchvision(spec, root, download=False, failures=failures)


@dataclass(frozen=True)
class _Split:
    data: np.ndarray
    targets: np.ndarray


def _read_idx_files(spec: DatasetSpec, root: Path) -> tuple[_Split, _Split] | None:
    """The MNIST family's (train, test) from the IDX files in torchvision's layout, or None where absent.

    Read with numpy, as torchvision's loader reads them: importing torchvision costs a run's server
    over a second (its models bring torch._dynamo), and it needs nothing else from it.
    """
    raw_dir = root / spec.torchvision_class / "raw"
    if not spec.folder.endswith("/raw") or not all((raw_dir / name).is_file() for name in _IDX_FILES):
        return None
    images, labels, test_images, test_labels = (_idx_array(raw_dir / name) for name in _IDX_FILES)
    if images is None or labels is None or test_images is None or test_labels is None:
        return None  # not plain uint8 IDX: torchvision's loader reports what is wrong
    return _Split(images, labels), _Split(test_images, test_labels)


def _idx_array(path: Path) -> np.ndarray | None:
    """An IDX file of unsigned bytes (magic 0x0000 08 <ndim>, big-endian int32 sizes, data), or None."""
    raw = bytearray(path.read_bytes())  # writable, so torch can take the array without a copy
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        return None
    ndim = raw[3]
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        return None
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _gunzip_atomically(source: Path, target: Path) -> None:
    """Decompress via a temp file in the target folder so no half-written file is ever visible."""
    # A plain open (not mkstemp) so the file gets the umask's permissions: data_dir is often shared.
    temp_path = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp_path, "wb") as out, gzip.open(source, "rb") as compressed:
            shutil.copyfileobj(compressed, out)
        os.replace(temp_path, target)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def _missing_data_message(
    name: str, spec: DatasetSpec, root: Path, debian_dir: Path, download: bool, failures: list[str]
) -> str:
    looked_at = [str(root / spec.folder)]
    if spec.debian_package is not None:
        looked_at.append(str(debian_dir))
    fixes = []
    if spec.debian_package is not None:
        fixes.append(f"apt-get install {spec.debian_package}")
    fixes.append("run once with network access and dataset.download=true" if not download
                 else "run once with network access")
    fixes.append(f"or put torchvision's {spec.torchvision_class} files in {root}")
    download_note = "" if download else " (download disabled)"
    return (
        f"dataset {name!r} not found{download_note}; looked in {' and '.join(looked_at)}"
        f" [{'; '.join(failures)}]; to fix: {', '.join(fixes)}"
    )


def _one_line(exc: BaseException) -> str:
    """Exception text squeezed onto one line, since DataError messages must be one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _to_image_dataset(name: str, spec: DatasetSpec, train, test) -> ImageDataset:
    return ImageDataset(
        name=name,
        train_x=_images_to_tensor(train.data, spec),
        train_y=_labels_to_tensor(train.targets),
        test_x=_images_to_tensor(test.data, spec),
        test_y=_labels_to_tensor(test.targets),
        num_classes=spec.num_classes,
        in_channels=spec.in_channels,
        image_size=spec.image_size,
    )


def _images_to_tensor(data, spec: DatasetSpec) -> torch.Tensor:
    """uint8 [N,H,W] (MNIST family) or [N,H,W,C] (CIFAR) -> normalized float32 [N,C,H,W]."""
    images = torch.as_tensor(np.asarray(data))
    if images.ndim == 3:
        images = images.unsqueeze(1)
    else:
        images = images.permute(0, 3, 1, 2)
    images = images.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return images.sub_(mean).div_(std)


def _labels_to_tensor(targets) -> torch.Tensor:
    return torch.as_tensor(np.asarray(targets), dtype=torch.int64)
