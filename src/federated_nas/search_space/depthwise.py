"""The supernet's depthwise convolutions on the CPU, with a backward built from fast kernels.

Why: on the CPU, oneDNN's backward of a depthwise convolution costs 5 to 20 times its forward on
the supernet's shapes, and most for the dilated ones: their input gradient has no fast kernel, and
under AVX2 their weight gradient falls back to one small im2col GEMM per channel. The same math,
on faster kernels:

- the input gradient of a stride-1 convolution with "same" padding is the same convolution of
  the output gradient with the kernel flipped, which runs on the forward kernel;
- a stride-2 dilation-2 convolution reads only the input's even rows and columns, so it is an
  undilated stride-1 convolution of those;
- a dilation-2 convolution with even padding reads only input pixels of its output pixel's row
  and column parity, so on large maps its weight gradient is the sum of four undilated weight
  gradients, one per parity grid; on small maps it is a forward depthwise convolution of the input
  with the output gradient as the kernel.

Other devices keep ``F.conv2d``'s own backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.graph import get_gradient_edge

MIN_PHASE_SIZE = 14  # below this, the four parity grids are too small to beat the dilated kernel


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, padding: int, dilation: int,
                     stride: int = 1) -> torch.Tensor:
    """A "same"-padded depthwise convolution: ``F.conv2d(x, weight, None, stride, padding, dilation, C)``."""
    if x.device.type != "cpu" or 2 * padding != dilation * (weight.shape[-1] - 1):
        return F.conv2d(x, weight, None, stride, padding, dilation, weight.shape[0])
    if stride == 2 and dilation == 2 and padding % 2 == 0:
        # it reads only the input's even rows and columns: an undilated stride-1 convolution of those
        return depthwise_conv2d(x[:, :, ::2, ::2], weight, padding // 2, 1)
    # oneDNN's strided undilated depthwise kernels are fast both ways; with no backward to come
    # (evaluation), the custom function would only add its bookkeeping to the forward
    if stride != 1 or not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return F.conv2d(x, weight, None, stride, padding, dilation, weight.shape[0])
    return _DepthwiseConv.apply(x, weight, padding, dilation)


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation = padding, dilation
        ctx.input_nodes = [get_gradient_edge(t).node if t.requires_grad else None for t in (x, weight)]
        return F.conv2d(x, weight, None, 1, padding, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)  # oneDNN's fast depthwise layout
        # under autocast the forward ran in grad_out's precision; the gradients return in the inputs' own
        compute = grad_out.dtype
        grad_x = grad_w = None
        if _needed(ctx, 0):  # "same" padding: the transposed convolution is the flipped one
            grad_x = F.conv2d(grad_out, weight.to(compute).flip((2, 3)), None, 1, ctx.padding, ctx.dilation,
                              weight.shape[0]).to(x.dtype)
        if _needed(ctx, 1):
            grad_w = _weight_grad(x.to(compute), grad_out, weight.to(compute), ctx.padding,
                                  ctx.dilation).to(weight.dtype)
        return grad_x, grad_w, None, None


def _needed(ctx, index: int) -> bool:
    """Whether this backward wants the gradient of input ``index``. ``ctx.needs_input_grad`` only says it
    requires one; a backward restricted with ``inputs=`` (MiLeNAS' alpha-only val pass) wants no weight
    gradients, and the built-in convolution skips them there too."""
    node = ctx.input_nodes[index]
    if node is None:
        return False
    try:
        return torch._C._will_engine_execute_node(node)
    except (AttributeError, RuntimeError):  # the private check missing or called outside the engine
        return ctx.needs_input_grad[index]


def _weight_grad(x, grad_out, weight, padding: int, dilation: int) -> torch.Tensor:
    if dilation == 1:
        return _plain_weight_grad(x, grad_out, weight, padding, dilation)
    if dilation == 2 and padding % 2 == 0 and min(x.shape[-2:]) >= MIN_PHASE_SIZE:
        total = None
        for row in range(2):
            for col in range(2):
                part = _plain_weight_grad(_parity_grid(x, row, col), _parity_grid(grad_out, row, col),
                                          weight, padding // 2, 1)
                total = part if total is None else total + part
        return total
    return _correlation_weight_grad(x, grad_out, padding, dilation)


def _correlation_weight_grad(x, grad_out, padding: int, dilation: int) -> torch.Tensor:
    """The weight gradient as a forward depthwise convolution: every (sample, channel) image of x
    correlated with its own output gradient as the kernel, at stride ``dilation``, then summed over
    the samples. Small maps only: the kernel is a whole output-gradient map."""
    n, c, h, w = x.shape
    images = x.reshape(1, n * c, h, w).contiguous(memory_format=torch.channels_last)
    kernels = grad_out.reshape(n * c, 1, h, w)
    taps = F.conv2d(images, kernels, None, dilation, padding, 1, n * c)
    return taps.view(n, c, *taps.shape[-2:]).sum(0).unsqueeze(1)


def _parity_grid(t: torch.Tensor, row: int, col: int) -> torch.Tensor:
    return t[:, :, row::2, col::2].contiguous(memory_format=torch.channels_last)


def _plain_weight_grad(x, grad_out, weight, padding: int, dilation: int) -> torch.Tensor:
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, None, [1, 1], [padding, padding], [dilation, dilation], False, [0, 0],
        weight.shape[0], [False, True, False])[1]
