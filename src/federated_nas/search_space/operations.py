"""The DARTS candidate operations as plain modules, one module per op.

These build the discrete network derived from a genotype, and they are the reference
that the batched supernet (``supernet.py``) must match op for op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class ReLUConvBN(nn.Sequential):
    """ReLU, convolution, BatchNorm: DARTS' cell-input preprocessing."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise (dilated) conv, pointwise conv, BatchNorm."""

    def __init__(self, c: int, kernel: int, stride: int, dilation: int, affine: bool):
        padding = dilation * (kernel - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, kernel, stride, padding, dilation=dilation, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConv with dilation 1; only the first one strides."""

    def __init__(self, c: int, kernel: int, stride: int, affine: bool):
        super().__init__(DilConv(c, kernel, stride, 1, affine), DilConv(c, kernel, 1, 1, affine))


def half_grid(x: torch.Tensor, offset: int) -> torch.Tensor:
    """The pixels a stride-2 1x1 conv reads: every second row and column from ``offset`` (0 or 1).

    Offset 1 is the grid shifted by one pixel, zero-padded so both grids have ceil(H/2) x ceil(W/2)
    pixels for any size. A stride-1 1x1 conv on this grid equals the stride-2 conv on ``x`` and
    avoids oneDNN's strided 1x1 kernels, whose AVX2 weight gradient is wrong for channels-last
    inputs with few channels (and writes past its buffer: heap corruption on AVX2-only CPUs).
    """
    grid = x[:, :, offset::2, offset::2]
    missing_h, missing_w = (x.shape[2] + 1) // 2 - grid.shape[2], (x.shape[3] + 1) // 2 - grid.shape[3]
    return F.pad(grid, (0, missing_w, 0, missing_h)) if missing_h or missing_w else grid


class FactorizedReduce(nn.Module):
    """Halve the resolution with two 1x1 convs on offset stride-2 grids (works for odd sizes too)."""

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {c_out}")
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, bias=False)  # stride 2 through half_grid
        self.conv_b = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.bn(torch.cat([self.conv_a(half_grid(x, 0)), self.conv_b(half_grid(x, 1))], dim=1))


class Zero(nn.Module):
    """The ``none`` op: a zero tensor of the output's shape."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def make_op(name: str, c: int, stride: int, affine: bool) -> nn.Module:
    """Build one candidate op by its DARTS name."""
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name.startswith("sep_conv_"):
        return SepConv(c, int(name[-1]), stride, affine)
    if name.startswith("dil_conv_"):
        return DilConv(c, int(name[-1]), stride, 2, affine)
    raise ValueError(f"unknown operation {name!r}; known: {', '.join(PRIMITIVES)}")
