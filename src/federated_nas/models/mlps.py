"""A plain MLP for vector data: the fixed network of FedAvg and the other fixed-network methods there."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from federated_nas.errors import ConfigError


def mlp(in_channels: int, num_classes: int, hidden: Sequence[int] = (128, 64)) -> nn.Sequential:
    """``Linear + ReLU`` per ``hidden`` width, then the classifier; ``in_channels`` is the feature count."""
    widths = [int(h) for h in hidden]
    if min(widths, default=1) < 1:
        raise ConfigError(f"model: mlp needs positive hidden widths, got {widths}")
    layers: list[nn.Module] = []
    for width_in, width_out in zip([in_channels, *widths], widths):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1] if widths else in_channels, num_classes))
