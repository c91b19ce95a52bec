"""Fixed hand-designed networks for the fixed-architecture baselines (the ``model`` config group).

Every builder takes ``in_channels`` and ``num_classes`` (what FedAvg passes from the dataset)
plus its own options, and works at any image size down to 8x8: the classifier sits behind
adaptive pooling, so no builder needs the image size. For vector data ``in_channels`` is the feature count (``mlp``).
"""

from __future__ import annotations

from federated_nas.models.cnn import small_cnn
from federated_nas.models.densenets import densenet
from federated_nas.models.mlps import mlp
from federated_nas.models.mobilenet import mobilenet_v3
from federated_nas.models.resnet import resnet18

__all__ = ["densenet", "mlp", "mobilenet_v3", "resnet18", "small_cnn"]
