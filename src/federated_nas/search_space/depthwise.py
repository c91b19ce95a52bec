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

A DARTS conv stage (ReLU, depthwise, pointwise, BatchNorm) also stores fewer activations here:
``depthwise_pointwise`` recomputes its depthwise output (and its input's ReLU) in the backward,
and ``batch_norm_keeping_output`` keeps the normalised output instead of the input, which is the
tensor the next stage keeps anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.graph import get_gradient_edge

MIN_PHASE_SIZE = 14  # below this, the four parity grids are too small to beat the dilated kernel


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, padding: int, dilation: int,
                     stride: int = 1) -> torch.Tensor:
    """A "same"-padded depthwise convolution: ``F.conv2d(x, weight, None, stride, padding, dilation, C)``."""
    return depthwise_pointwise(x, weight, None, padding, dilation, stride)


def depthwise_pointwise(x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor | None, padding: int,
                        dilation: int, stride: int, groups: int = 1, relu: bool = False,
                        even_grid: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(F.relu(x) if relu else x, dw_weight, ...)`` (depthwise, "same" padding), then, unless
    ``pw_weight`` is None, ``F.conv2d(., pw_weight, groups=groups)`` (grouped pointwise): a DARTS conv stage.

    Why fused: the pointwise convolution's weight gradient needs the depthwise output, and the
    depthwise one needs ``relu(x)``; separate ops would keep both for the backward. Here only ``x``
    is kept and the backward recomputes the rest (a ReLU and one cheap depthwise forward).

    A stride-2 dilation-2 stage with even padding reads only ``x``'s even rows and columns, so it runs
    as an undilated stride-1 convolution of those: ``even_grid`` (``x[:, :, ::2, ::2]``, sliced by the
    caller when several ops share it) or a slice taken here.
    """
    same = 2 * padding == dilation * (dw_weight.shape[-1] - 1)
    if same and stride == 2 and dilation == 2 and padding % 2 == 0:
        x = x[:, :, ::2, ::2] if even_grid is None else even_grid
        padding, dilation, stride = padding // 2, 1, 1
    weights = (dw_weight,) if pw_weight is None else (dw_weight, pw_weight)
    # with no backward to come (evaluation), the custom function would only add its bookkeeping
    if (x.device.type != "cpu" or not same or not torch.is_grad_enabled()
            or not any(t.requires_grad for t in (x, *weights))):
        hidden = F.conv2d(F.relu(x) if relu else x, dw_weight, None, stride, padding, dilation, dw_weight.shape[0])
        return hidden if pw_weight is None else F.conv2d(hidden, pw_weight, None, 1, 0, 1, groups)
    return _DepthwisePointwise.apply(x, dw_weight, pw_weight, padding, dilation, stride, groups, relu)


class _DepthwisePointwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dw_weight, pw_weight, padding, dilation, stride, groups, relu):
        ctx.save_for_backward(x, dw_weight, pw_weight)
        ctx.padding, ctx.dilation, ctx.stride, ctx.groups, ctx.relu = padding, dilation, stride, groups, relu
        ctx.input_nodes = _gradient_nodes(x, dw_weight, pw_weight)
        hidden = F.conv2d(F.relu(x) if relu else x, dw_weight, None, stride, padding, dilation, dw_weight.shape[0])
        return hidden if pw_weight is None else F.conv2d(hidden, pw_weight, None, 1, 0, 1, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, dw_weight, pw_weight = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)  # oneDNN's fast depthwise layout
        compute = grad_out.dtype  # see _depthwise_grads
        need_x, need_dw, need_pw = (_needed(ctx, i) for i in range(3))
        inputs = F.relu(x) if ctx.relu else x  # recomputed, not stored
        grad_hidden, grad_pw = grad_out, None
        if pw_weight is not None:
            hidden = F.conv2d(inputs.to(compute), dw_weight.to(compute), None, ctx.stride, ctx.padding,
                              ctx.dilation, dw_weight.shape[0])  # recomputed, not stored
            grad_hidden, grad_pw, _ = torch.ops.aten.convolution_backward(
                grad_out, hidden, pw_weight.to(compute), None, [1, 1], [0, 0], [1, 1], False, [0, 0], ctx.groups,
                [need_x or need_dw, need_pw, False])
            del hidden
            if grad_hidden is not None:
                grad_hidden = grad_hidden.contiguous(memory_format=torch.channels_last)
        grad_x = grad_dw = None
        if ctx.stride != 1 and (need_x or need_dw):  # oneDNN's strided depthwise backward is fast as it is
            grad_x, grad_dw, _ = torch.ops.aten.convolution_backward(
                grad_hidden, inputs.to(compute), dw_weight.to(compute), None, [ctx.stride] * 2, [ctx.padding] * 2,
                [ctx.dilation] * 2, False, [0, 0], dw_weight.shape[0], [need_x, need_dw, False])
            grad_x = None if grad_x is None else grad_x.to(x.dtype)
            grad_dw = None if grad_dw is None else grad_dw.to(dw_weight.dtype)
        elif need_x or need_dw:
            grad_x, grad_dw = _depthwise_grads(ctx, inputs, dw_weight, grad_hidden, need_x, need_dw)
        if grad_x is not None and ctx.relu:
            grad_x = torch.ops.aten.threshold_backward(grad_x, x, 0)  # ReLU's own backward
        return grad_x, grad_dw, None if grad_pw is None else grad_pw.to(pw_weight.dtype), None, None, None, None, None


def batch_norm_keeping_output(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                              momentum: float, eps: float) -> torch.Tensor:
    """Training-mode BatchNorm without affine (``F.batch_norm(x, running_mean, running_var, None, None,
    True, momentum, eps)``, running statistics updated alike) that keeps its output for the backward.

    Why: for the normalised output z the input gradient is ``invstd * (g - mean(g) - z * mean(g z))``
    per channel, so the input need not be kept; a following ``depthwise_pointwise(z, ..., relu=True)``
    keeps z itself, and the stage between two BatchNorms then stores one activation, not two.
    """
    return _NormalizeKeepingOutput.apply(x, running_mean, running_var, momentum, eps)


class _NormalizeKeepingOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, running_mean, running_var, momentum, eps):
        out, _, invstd = torch.ops.aten.native_batch_norm(x, None, None, running_mean, running_var, True,
                                                           momentum, eps)
        ctx.save_for_backward(out, invstd)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        z, invstd = ctx.saved_tensors
        # BatchNorm's own backward, handed z as an input already normalised (mean 0, invstd 1) and the
        # real invstd as the affine weight: invstd * (g - mean(g) - z * mean(g z)) in one kernel
        unit = torch.ones_like(invstd)
        return (torch.ops.aten.native_batch_norm_backward(
            grad_out, z, invstd, None, None, torch.zeros_like(invstd), unit, True, 0.0, [True, False, False])[0],
            None, None, None, None)


def _depthwise_grads(ctx, x, weight, grad_out, need_x: bool, need_w: bool):
    """The input and weight gradients of a stride-1 "same" depthwise convolution, from fast kernels.

    Under autocast the forward ran in ``grad_out``'s precision; the gradients return in the inputs' own.
    """
    compute = grad_out.dtype
    grad_x = grad_w = None
    if need_x:  # "same" padding: the transposed convolution is the flipped one
        grad_x = F.conv2d(grad_out, weight.to(compute).flip((2, 3)), None, 1, ctx.padding, ctx.dilation,
                          weight.shape[0]).to(x.dtype)
    if need_w:
        grad_w = _weight_grad(x.to(compute), grad_out, weight.to(compute), ctx.padding,
                              ctx.dilation).to(weight.dtype)
    return grad_x, grad_w


def _gradient_nodes(*tensors: torch.Tensor | None) -> list:
    """Each input's node in the autograd graph (None where it needs no gradient), for ``_needed``."""
    return [get_gradient_edge(t).node if t is not None and t.requires_grad else None for t in tensors]


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
