"""ResNet-18 (He et al., 2016) with the CIFAR stem, from torchvision's builder (no pretrained weights)."""

from __future__ import annotations

import torchvision
from torch import nn

from federated_nas.models.small_images import small_image_stem_conv


def resnet18(in_channels: int, num_classes: int) -> torchvision.models.ResNet:
    """About 11.2M parameters; BatchNorm kept, so FedAvg averages its running statistics too."""
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = small_image_stem_conv(model.conv1, in_channels)
    model.maxpool = nn.Identity()
    return model
