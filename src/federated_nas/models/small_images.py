"""Adapting ImageNet networks to 28x28 and 32x32 images.

ImageNet stems shrink the input 4x (a stride-2 7x7 or 3x3 conv, then a max-pool) before the
first block; on small images that leaves too little resolution for the later stages, so the
usual CIFAR adaptation keeps full resolution at the stem: a 3x3 stride-1 conv and no max-pool.
"""

from __future__ import annotations

from torch import nn


def small_image_stem_conv(replaced: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A 3x3 stride-1 conv reading ``in_channels`` with the output width of the conv it replaces."""
    conv = nn.Conv2d(in_channels, replaced.out_channels, kernel_size=3, stride=1, padding=1,
                     bias=replaced.bias is not None)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv
