"""The CNN of the FedAvg paper (McMahan et al., 2017): the classic federated baseline network."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from federated_nas.errors import ConfigError


def conv_pool_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=5, padding=2), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2, ceil_mode=True))


def small_cnn(in_channels: int, num_classes: int, channels: Sequence[int] = (32, 64), hidden: int = 512,
              pooled_size: int = 7) -> nn.Sequential:
    """5x5 conv + 2x2 max-pool blocks of ``channels`` widths, a ``hidden``-unit layer, the classifier.

    The feature map is pooled adaptively to ``pooled_size`` squared before the dense layers: at
    28x28 that is the paper's 7x7 exactly (1,663,370 parameters for MNIST), and 32x32 or smaller
    images get the same dense layers.
    """
    widths = [int(c) for c in channels]
    if not widths or min(widths) < 1 or hidden < 1 or pooled_size < 1:
        raise ConfigError(f"model: small_cnn needs positive channels, hidden and pooled_size, got "
                          f"channels={widths}, hidden={hidden}, pooled_size={pooled_size}")
    blocks = [conv_pool_block(c_in, c_out) for c_in, c_out in zip([in_channels, *widths], widths)]
    return nn.Sequential(
        *blocks,
        nn.AdaptiveAvgPool2d(pooled_size),
        nn.Flatten(),
        nn.Linear(widths[-1] * pooled_size * pooled_size, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )
