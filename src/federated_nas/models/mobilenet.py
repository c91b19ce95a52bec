"""MobileNetV3 (Howard et al., 2019), small or large, from torchvision's builders, stem at stride 1."""

from __future__ import annotations

import torchvision

from federated_nas.errors import ConfigError
from federated_nas.models.small_images import small_image_stem_conv

BUILDERS = {"small": torchvision.models.mobilenet_v3_small, "large": torchvision.models.mobilenet_v3_large}


def mobilenet_v3(in_channels: int, num_classes: int, size: str = "small",
                 width_mult: float = 1.0) -> torchvision.models.MobileNetV3:
    """MobileNetV3-Small by default (about 1.5M parameters at 10 classes); ``width_mult`` scales every layer."""
    if size not in BUILDERS:
        raise ConfigError(f"model.size={size!r}: mobilenet_v3 comes in {' or '.join(BUILDERS)}")
    if not width_mult > 0:
        raise ConfigError(f"model.width_mult must be positive, got {width_mult}")
    model = BUILDERS[size](weights=None, num_classes=num_classes, width_mult=float(width_mult))
    stem = model.features[0]
    stem[0] = small_image_stem_conv(stem[0], in_channels)
    return model
