"""The supernet's convolutions give the same values and gradients through oneDNN as through PyTorch's own kernels.

On AVX2 CPUs (and anywhere under ``ONEDNN_MAX_CPU_ISA=AVX2``, which CI also runs) oneDNN's strided 1x1
kernel (``jit_1x1:avx2`` backward_weights) computed a wrong weight gradient for channels-last inputs with
few channels, and wrote past its buffer: glibc aborted the suite with heap corruption. The reduction
cell's factorized skip hit it on a sampled subset of groups (``mb8_ic4oc2_ih8oh4kh1sh2``). The
stride is now taken by ``half_grid`` before a stride-1 1x1 conv; these tests hold every such path to the
kernels PyTorch uses with oneDNN off.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from federated_nas.search_space.operations import FactorizedReduce, half_grid
from federated_nas.search_space.relaxations import HardGumbelRelaxation, SoftmaxRelaxation
from federated_nas.search_space.supernet import EdgeBundle, SearchNetwork, PRIMITIVES


def values_and_gradients(module: torch.nn.Module, x: torch.Tensor, mkldnn: bool, *extra) -> list[torch.Tensor]:
    """Output and the gradients of the input and every parameter, for a fixed output cotangent."""
    x = x.detach().clone().requires_grad_()
    with torch.backends.mkldnn.flags(enabled=mkldnn):
        out = module(x, *extra)
        cotangent = torch.arange(out.numel(), dtype=out.dtype).view_as(out).remainder(7) - 3
        params = [p for p in module.parameters() if p.requires_grad]
        grads = torch.autograd.grad(out, [x, *params], cotangent, allow_unused=True)
    return [out.detach()] + [g for g in grads if g is not None]


def assert_same_through_onednn(module: torch.nn.Module, x: torch.Tensor, *extra) -> None:
    torch.manual_seed(0)
    with_onednn = values_and_gradients(module, x, True, *extra)
    torch.manual_seed(0)
    native = values_and_gradients(module, x, False, *extra)
    assert len(with_onednn) == len(native)
    for a, b in zip(with_onednn, native):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [7, 8])
def test_half_grid_conv_equals_the_strided_conv(size):
    x = torch.randn(3, 4, size, size, dtype=torch.float64)
    weight = torch.randn(2, 4, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(F.conv2d(half_grid(x, 0), weight), F.conv2d(x, weight, stride=2))
    shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
    torch.testing.assert_close(F.conv2d(half_grid(x, 1), weight), F.conv2d(shifted, weight, stride=2))


@pytest.mark.parametrize("c_in,c_out,size", [(4, 4, 8), (6, 8, 4), (2, 4, 8)])
def test_factorized_reduce_on_channels_last_input(c_in, c_out, size):
    """The shapes oneDNN's AVX2 strided 1x1 kernel got wrong: mb8, few channels, channels-last."""
    torch.manual_seed(0)
    reduce = FactorizedReduce(c_in, c_out, affine=False)
    x = torch.randn(8, c_in, size, size).contiguous(memory_format=torch.channels_last)
    assert_same_through_onednn(reduce, x)


def test_reduction_skip_on_one_sampled_group():
    """The crash of issue 13: FedDSNAS samples one reduce-skip edge, a single-group 1x1 conv (ic4 -> oc2)."""
    torch.manual_seed(0)
    bundle = EdgeBundle(4, num_sources=2, num_edges=2, stride=2)
    weights = torch.zeros(2, 2, len(PRIMITIVES))
    weights[..., PRIMITIVES.index("max_pool_3x3")] = 1.0
    weights[0, 1] = 0.0
    weights[0, 1, PRIMITIVES.index("skip_connect")] = 1.0  # one skip group live: positions = [1]
    x = torch.randn(8, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    assert_same_through_onednn(bundle, x, weights, True)


@pytest.mark.parametrize("relaxation", [SoftmaxRelaxation, HardGumbelRelaxation])
def test_supernet_step_through_onednn(relaxation):
    """A whole supernet step (every op, both cell kinds, the stride-2 stem), dense and sampled."""
    torch.manual_seed(0)
    net = SearchNetwork(1, 10, C=4, layers=3, stem_stride=2, relaxation=relaxation())
    assert_same_through_onednn(net, torch.randn(8, 1, 16, 16))
