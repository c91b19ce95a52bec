"""Ops, cells, the batched supernet against the op-by-op reference, genotypes, discrete networks."""

from __future__ import annotations

import pytest
import torch

from federated_nas.search_space.depthwise import (
    MIN_PHASE_SIZE,
    batch_norm_keeping_output,
    depthwise_conv2d,
    depthwise_pointwise,
)
from federated_nas.search_space.genotypes import Genotype, derive_cell, derive_genotype, edge_index
from federated_nas.search_space.network import GenotypeNetwork
from federated_nas.search_space.operations import PRIMITIVES, make_op
from federated_nas.search_space.reference import ReferenceSearchNetwork
from federated_nas.search_space.relaxations import GumbelSoftmaxRelaxation, HardGumbelRelaxation
from federated_nas.search_space.supernet import EdgeBundle, SearchNetwork


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_keeps_channels_and_strides(name, stride):
    x = torch.randn(2, 4, 7, 7)
    out = make_op(name, 4, stride, affine=False)(x)
    side = (7 + stride - 1) // stride  # ceil: odd sizes reduce without losing the border
    assert out.shape == (2, 4, side, side)


@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32), (1, 14)])
def test_supernet_logits_shape_for_one_and_three_channels(in_channels, size):
    net = SearchNetwork(in_channels, 10, C=4, layers=3)
    assert net(torch.randn(2, in_channels, size, size)).shape == (2, 10)
    assert [cell.reduction for cell in net.cells] == [False, True, True]
    assert net.alpha_normal.shape == (14, len(PRIMITIVES))


def test_arch_and_weight_parameters_partition_the_model():
    net = SearchNetwork(1, 10, C=2, layers=2)
    arch, weights = net.arch_parameters(), net.weight_parameters()
    assert len(arch) == 2
    assert len(arch) + len(weights) == len(list(net.parameters()))


@pytest.mark.parametrize("stride", [1, 2])
def test_bundle_equals_plain_mixed_ops_in_value_and_gradient(stride, device):
    torch.manual_seed(0)
    bundle = EdgeBundle(4, num_sources=2, num_edges=3, stride=stride).double().to(device)
    x = torch.randn(5, 8, 9, 9, dtype=torch.float64).to(device).requires_grad_()
    weights = torch.softmax(torch.randn(2, 3, len(PRIMITIVES), dtype=torch.float64), -1).to(device).requires_grad_()
    fast = bundle(x, weights)  # [N, H, W, E, C]
    sources = x.view(5, 2, 4, 9, 9)
    plain = []
    for edge in range(3):
        total = 0
        for source in range(2):
            for k, op in enumerate(bundle.edge_ops(source, edge).values()):
                total = total + weights[source, edge, k] * op(sources[:, source])
        plain.append(total)
    plain = torch.stack(plain, 1).permute(0, 3, 4, 1, 2)
    torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-10)
    grads_fast = torch.autograd.grad((fast ** 2).sum(), [x, weights])
    grads_plain = torch.autograd.grad((plain ** 2).sum(), [x, weights])
    for a, b in zip(grads_fast, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kernel, dilation", [(3, 1), (5, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [7, 9, 15, 16])
def test_depthwise_conv_with_fast_backward_equals_conv2d_in_value_and_gradient(kernel, dilation, stride, size):
    """Every path (flipped-kernel input gradient; plain, parity-grid and correlation weight gradients; strided)
    has F.conv2d's math: float64 against F.conv2d, and float32, which runs oneDNN's kernels (their AVX2
    variants under ONEDNN_MAX_CPU_ISA=AVX2), against float64."""
    torch.manual_seed(0)
    x = torch.randn(3, 6, size, size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(6, 1, kernel, kernel, dtype=torch.float64)
    pad = dilation * (kernel - 1) // 2

    def value_and_grads(x, weight, conv):
        x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
        out = conv(x, weight)
        upstream = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        return (out, *torch.autograd.grad(out, [x, weight], upstream))

    def fast(x, weight):
        return depthwise_conv2d(x, weight, pad, dilation, stride)

    plain = value_and_grads(x, weight, lambda x, w: torch.nn.functional.conv2d(x, w, None, stride, pad, dilation, 6))
    for a, b in zip(value_and_grads(x, weight, fast), plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(value_and_grads(x.float(), weight.float(), fast), plain, strict=True):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-4)
    assert (size >= MIN_PHASE_SIZE) == (size in (15, 16))  # every weight-gradient path is covered


def test_depthwise_conv_skips_the_weight_gradient_a_restricted_backward_does_not_want(monkeypatch):
    """MiLeNAS' val pass takes gradients for alpha only (``inputs=``): like the built-in convolution, the
    fast backward then computes no weight gradient."""
    import federated_nas.search_space.depthwise as depthwise

    calls = []
    monkeypatch.setattr(depthwise, "_weight_grad", lambda *args: calls.append(1) or torch.zeros_like(args[2]))
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    weight = torch.randn(4, 1, 3, 3, requires_grad=True)
    scale = torch.ones(1, requires_grad=True)
    out = depthwise_conv2d(x * scale, weight, 2, 2).square().sum()
    torch.autograd.grad(out, [scale], retain_graph=True)
    assert calls == []
    torch.autograd.grad(out, [scale, weight])
    assert calls == [1]


@pytest.mark.parametrize("kernel, dilation, stride", [(3, 1, 1), (5, 2, 1), (3, 1, 2), (5, 2, 2)])
@pytest.mark.parametrize("relu", [False, True])
def test_fused_conv_stage_equals_its_separate_ops_and_keeps_only_its_input(kernel, dilation, stride, relu):
    """(ReLU,) depthwise, grouped pointwise: the same value and gradients as the separate ops in float64,
    while the forward keeps only the input and the two weights for the backward."""
    torch.manual_seed(0)
    groups, c = 3, 4
    x = torch.randn(2, groups * c, 16, 16, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    dw = torch.randn(groups * c, 1, kernel, kernel, dtype=torch.float64)
    pw = torch.randn(groups * c, c, 1, 1, dtype=torch.float64)
    pad = dilation * (kernel - 1) // 2
    F = torch.nn.functional

    def value_and_grads(stage):
        leaves = [t.detach().requires_grad_() for t in (x, dw, pw)]
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
            out = stage(*leaves)
        upstream = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        return (out, *torch.autograd.grad(out, leaves, upstream)), kept

    fused, kept = value_and_grads(lambda x, dw, pw: depthwise_pointwise(x, dw, pw, pad, dilation, stride, groups, relu))
    plain, _ = value_and_grads(lambda x, dw, pw: F.conv2d(
        F.conv2d(F.relu(x) if relu else x, dw, None, stride, pad, dilation, groups * c), pw, None, 1, 0, 1, groups))
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert len(kept) == 3 and kept[0].shape[1] == groups * c and kept[1].shape == dw.shape
    assert kept[0].untyped_storage().data_ptr() == x.untyped_storage().data_ptr() or stride == 2


def test_batch_norm_keeping_output_equals_batch_norm_and_keeps_only_its_output():
    """Value, input gradient and running statistics as ``F.batch_norm`` in training mode (float64);
    what the forward keeps is its output (and one value per channel), never its input."""
    torch.manual_seed(0)
    x = torch.randn(5, 6, 7, 7, dtype=torch.float64) * 3 + 1
    stats = [torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)]
    plain_stats = [t.clone() for t in stats]
    upstream = torch.randn(5, 6, 7, 7, dtype=torch.float64)
    leaf, plain_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        out = batch_norm_keeping_output(leaf, *stats, 0.1, 1e-5)
    plain = torch.nn.functional.batch_norm(plain_leaf, *plain_stats, None, None, True, 0.1, 1e-5)
    torch.testing.assert_close(out, plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(stats, plain_stats, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    grad, = torch.autograd.grad(out, leaf, upstream)
    plain_grad, = torch.autograd.grad(plain, plain_leaf, upstream)
    torch.testing.assert_close(grad, plain_grad, rtol=1e-10, atol=1e-10)
    assert [t.shape for t in kept] == [out.shape, (6,)] and kept[0].data_ptr() == out.data_ptr()


@pytest.mark.parametrize("relaxation, combinations, prune", [
    ("softmax", None, None), ("gumbel", 2, None), ("softmax", None, 0.12), ("gumbel", 2, 0.1),
    ("hard", None, None), ("hard", 2, 0.1),
])
def test_supernet_matches_op_by_op_reference_for_random_alphas(relaxation, combinations, prune, device):
    """Plain, Gumbel with input combinations, pruned and hard-sampled supernets against the op-by-op reference.

    Hard samples make the supernet skip every zero-weight op (``skip_zero``); the reference
    computes them all, so equal outputs and gradients show the skipping is exact. Pruning runs on the device.
    """
    torch.manual_seed(1)
    relax = {"gumbel": GumbelSoftmaxRelaxation(0.7), "hard": HardGumbelRelaxation(0.7)}.get(relaxation)
    net = SearchNetwork(3, 10, C=4, layers=3, relaxation=relax, input_combinations=combinations).double().to(device)
    with torch.no_grad():  # float64: the comparison sees math, not rounding
        for alpha in net.arch_parameters():
            alpha.normal_(0, 2)
    if prune is not None:
        removed = net.prune(prune)
        assert removed["ops"] > 0
    reference = ReferenceSearchNetwork(net)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64).to(device)
    torch.manual_seed(5)  # the same Gumbel noise for both
    fast_out = net(x)
    torch.manual_seed(5)
    ref_out = reference(x)
    torch.testing.assert_close(fast_out, ref_out, rtol=1e-10, atol=1e-10)
    fast_grads = torch.autograd.grad(fast_out.logsumexp(1).sum(), net.arch_parameters())
    ref_grads = torch.autograd.grad(ref_out.logsumexp(1).sum(), reference.arch_parameters())
    for fast_grad, ref_grad in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(fast_grad, ref_grad, rtol=1e-9, atol=1e-10)


def test_edge_order_is_darts():
    assert edge_index(4)[:5] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert len(edge_index(4)) == 14


def test_derive_cell_known_answer():
    """Hand-made weights: node 0 prefers sep3 from 1 and skip from 0; later nodes pick their two strongest."""
    ops = {name: k for k, name in enumerate(PRIMITIVES)}
    weights = torch.full((14, len(PRIMITIVES)), 0.01)
    def put(row, op, value):
        weights[row, ops[op]] = value
    put(0, "skip_connect", 0.5); put(1, "sep_conv_3x3", 0.9)                       # node 0: edges 0,1
    put(2, "max_pool_3x3", 0.2); put(3, "dil_conv_3x3", 0.3); put(4, "sep_conv_5x5", 0.8)  # node 1
    put(5, "none", 0.99); put(5, "avg_pool_3x3", 0.1); put(6, "sep_conv_3x3", 0.6); put(8, "dil_conv_5x5", 0.7)
    put(9, "sep_conv_3x3", 0.4); put(13, "skip_connect", 0.45)                        # node 3
    genes = derive_cell(weights, steps=4)
    assert genes == [
        ("sep_conv_3x3", 1), ("skip_connect", 0),
        ("sep_conv_5x5", 2), ("dil_conv_3x3", 1),
        ("dil_conv_5x5", 3), ("sep_conv_3x3", 1),  # the strong `none` on edge (2, 0) is ignored
        ("skip_connect", 4), ("sep_conv_3x3", 0),
    ]


def test_genotype_json_round_trip_has_darts_fields(tmp_path):
    genotype = derive_genotype(torch.randn(14, 8), torch.randn(14, 8))
    path = genotype.save(tmp_path / "genotype.json")
    assert Genotype.load(path) == genotype
    import json
    assert set(json.loads(path.read_text())) == {"normal", "normal_concat", "reduce", "reduce_concat"}
    assert genotype.normal_concat == [2, 3, 4, 5]


def test_derivation_is_deterministic():
    alpha = torch.zeros(14, 8)  # all ties
    assert derive_genotype(alpha, alpha) == derive_genotype(alpha.clone(), alpha.clone())


@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_network_from_genotype(in_channels, size):
    genotype = derive_genotype(torch.randn(14, 8), torch.randn(14, 8))
    net = GenotypeNetwork(genotype, in_channels, 10, C=4, layers=3)
    assert net(torch.randn(2, in_channels, size, size)).shape == (2, 10)
    assert sum(p.numel() for p in net.parameters()) < sum(
        p.numel() for p in SearchNetwork(in_channels, 10, C=4, layers=3).parameters())


def test_bad_genotype_file_is_one_clear_error(tmp_path):
    from federated_nas.errors import DataError
    path = tmp_path / "g.json"
    path.write_text('{"normal": []}')
    with pytest.raises(DataError, match="not a genotype"):
        Genotype.load(path)
