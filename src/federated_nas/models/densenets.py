"""DenseNet (Huang et al., 2017) from torchvision's class, DenseNet-121 by default, CIFAR stem."""

from __future__ import annotations

from collections.abc import Sequence

import torchvision
from torch import nn

from federated_nas.errors import ConfigError
from federated_nas.models.small_images import small_image_stem_conv


def densenet(in_channels: int, num_classes: int, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
             num_init_features: int = 64, bn_size: int = 4, drop_rate: float = 0.0) -> torchvision.models.DenseNet:
    """The defaults are DenseNet-121's (about 7M parameters); a small growth rate and short blocks
    (e.g. growth_rate=12, block_config=[4, 4, 4]) make a network fast enough for a CPU."""
    blocks = tuple(int(n) for n in block_config)
    if not blocks or min(blocks) < 1 or growth_rate < 1 or num_init_features < 1:
        raise ConfigError(f"model: densenet needs positive growth_rate, num_init_features and block_config "
                          f"layers, got growth_rate={growth_rate}, num_init_features={num_init_features}, "
                          f"block_config={list(blocks)}")
    model = torchvision.models.DenseNet(growth_rate=growth_rate, block_config=blocks,
                                        num_init_features=num_init_features, bn_size=bn_size,
                                        drop_rate=drop_rate, num_classes=num_classes)
    model.features.conv0 = small_image_stem_conv(model.features.conv0, in_channels)
    model.features.pool0 = nn.Identity()
    return model
