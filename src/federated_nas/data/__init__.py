"""Image and vector datasets held in memory, partitioners that split them among clients, and per-client splits."""

from federated_nas.data.datasets import (
    DATASETS,
    ImageDataset,
    load_image_dataset,
    make_synthetic_dataset,
)
from federated_nas.data.vectors import VectorDataset, load_tabular_dataset, make_signal_dataset
from federated_nas.data.federated_data import ClientData, FederatedData, build_federated_data
from federated_nas.data.partitions import (
    DirichletPartitioner,
    IIDPartitioner,
    LabelSkewPartitioner,
    class_counts,
)

__all__ = [
    "DATASETS",
    "ClientData",
    "DirichletPartitioner",
    "FederatedData",
    "IIDPartitioner",
    "ImageDataset",
    "LabelSkewPartitioner",
    "VectorDataset",
    "build_federated_data",
    "class_counts",
    "load_image_dataset",
    "load_tabular_dataset",
    "make_signal_dataset",
    "make_synthetic_dataset",
]
