"""The CNN of the FedAvg paper (McMahan et al., 2017): the classic federated baseline network."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from federated_nas.errors import ConfigError
from federated_nas.models.budget import sized


def conv_pool_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=5, padding=2), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2, ceil_mode=True))


def small_cnn(in_channels: int, num_classes: int, channels: Sequence[int] = (32, 64), hidden: int = 512,
              pooled_size: int = 7, budget_params: int | None = None) -> nn.Sequential:
    """5x5 conv + 2x2 max-pool blocks of ``channels`` widths, a ``hidden``-unit layer, the classifier.

    The feature map is pooled adaptively to ``pooled_size`` squared before the dense layers: at
    28x28 that is the paper's 7x7 exactly (1,663,370 parameters for MNIST), and 32x32 or smaller
    images get the same dense layers. With ``budget_params`` every width (channels and hidden) is
    scaled by one factor, the first block's width the knob, to meet that parameter count.
    """
    first = int(channels[0]) if len(channels) else 0

    def build(width: int) -> nn.Sequential:
        def scaled(value: int) -> int:  # as given at the configured width; bad values are _cnn's to name
            return value if width == first else max(1, round(value * width / first))

        return _cnn(in_channels, num_classes, [scaled(c) for c in channels], scaled(hidden), pooled_size)

    if first < 1:
        raise ConfigError(f"model: small_cnn needs positive channels, got {list(channels)}")
    return sized(build, first, budget_params, "the CNN", "first_channels")


def _cnn(in_channels: int, num_classes: int, channels: Sequence[int], hidden: int, pooled_size: int) -> nn.Sequential:
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
