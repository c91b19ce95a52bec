"""The DARTS supernet, computed edge-bundle by edge-bundle instead of op by op.

Why: a DARTS cell has 14 mixed edges of 8 ops; computed one module at a time that is
hundreds of small, memory-bound kernels per cell, and on a CPU the step is dominated by
them. Here all edges that leave the same source node form one ``EdgeBundle``:
the ReLU is applied once, every conv op of every edge is one grouped convolution, the
pooling ops (whose affine-free BatchNorm sees the same input on every edge, so gives
the same output) are computed once per source, and ``none`` is not computed at all.
The function is the same as DARTS' op-by-op mixed op; ``EdgeBundle.edge_ops`` rebuilds
the plain per-edge modules with the same weights, which the tests compare against.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from federated_nas.search_space.genotypes import Genotype, derive_genotype, edge_index
from federated_nas.search_space.network import GenotypeNetwork
from federated_nas.search_space.operations import PRIMITIVES, FactorizedReduce, ReLUConvBN, make_op, shifted_by_one

CONV_OPS = {  # name -> (kernel, dilation, stacked DilConv stages)
    "sep_conv_3x3": (3, 1, 2),
    "sep_conv_5x5": (5, 1, 2),
    "dil_conv_3x3": (3, 2, 1),
    "dil_conv_5x5": (5, 2, 1),
}
POOL_OPS = ("max_pool_3x3", "avg_pool_3x3")


def _conv_weight(out_channels: int, in_per_group: int, kernel: int) -> nn.Parameter:
    """A conv weight initialised exactly as ``nn.Conv2d`` would for the same per-group shape."""
    weight = torch.empty(out_channels, in_per_group, kernel, kernel)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return nn.Parameter(weight)


class EdgeBundle(nn.Module):
    """The mixed ops of ``num_edges`` edges leaving each of ``num_sources`` same-shaped sources.

    Input ``[N, S*C, H, W]`` (sources stacked on channels) and op weights ``[S, E, ops]``;
    output ``[N, H', W', E, C]`` (channels-last): per target edge, the weighted op outputs
    summed over sources.
    """

    def __init__(self, c: int, num_sources: int, num_edges: int, stride: int, primitives=PRIMITIVES):
        super().__init__()
        self.c, self.num_sources, self.num_edges, self.stride = c, num_sources, num_edges, stride
        self.primitives = tuple(primitives)
        groups = num_sources * num_edges
        self.conv_params = nn.ParameterDict()
        self.bns = nn.ModuleDict()
        for name in self.primitives:
            if name in CONV_OPS:
                kernel, _, stages = CONV_OPS[name]
                for stage in range(stages):
                    self.conv_params[f"{name}_dw{stage}"] = _conv_weight(groups * c, 1, kernel)
                    self.conv_params[f"{name}_pw{stage}"] = _conv_weight(groups * c, c, 1)
                    self.bns[f"{name}_bn{stage}"] = nn.BatchNorm2d(groups * c, affine=False)
            elif name in POOL_OPS:
                self.bns[name] = nn.BatchNorm2d(num_sources * c, affine=False)
            elif name == "skip_connect" and stride == 2:
                self.conv_params["skip_a"] = _conv_weight(groups * c // 2, c, 1)
                self.conv_params["skip_b"] = _conv_weight(groups * c // 2, c, 1)
                self.bns["skip_bn"] = nn.BatchNorm2d(groups * c, affine=False)
            elif name not in ("none", "skip_connect"):
                raise ValueError(f"unknown operation {name!r}; known: {', '.join(PRIMITIVES)}")

    @property
    def groups(self) -> int:
        return self.num_sources * self.num_edges

    def _conv_op(self, name: str, replicated: torch.Tensor) -> torch.Tensor:
        kernel, dilation, stages = CONV_OPS[name]
        groups, y = self.groups, replicated
        for stage in range(stages):
            if stage:
                y = F.relu(y)
            pad = dilation * (kernel - 1) // 2
            y = F.conv2d(y, self.conv_params[f"{name}_dw{stage}"], None, 1, pad, dilation, groups * self.c)
            if stage == 0 and self.stride == 2:
                # same values as a stride-2 conv, but CPU backends have no fast strided depthwise kernel
                y = y[:, :, ::2, ::2]
            y = F.conv2d(y, self.conv_params[f"{name}_pw{stage}"], None, 1, 0, 1, groups)
            y = self.bns[f"{name}_bn{stage}"](y)
        return y

    def _reduce_skip(self, replicated: torch.Tensor) -> torch.Tensor:
        a = F.conv2d(replicated, self.conv_params["skip_a"], None, 2, 0, 1, self.groups)
        b = F.conv2d(shifted_by_one(replicated), self.conv_params["skip_b"], None, 2, 0, 1, self.groups)
        n, _, h, w = a.shape
        half = self.c // 2
        both = torch.stack([a.view(n, self.groups, half, h, w), b.view(n, self.groups, half, h, w)], dim=2)
        return self.bns["skip_bn"](both.view(n, self.groups * self.c, h, w))

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # Channels-last throughout: CPU depthwise convolutions are several times faster in it,
        # and splitting the channel axis into (source, edge, channel) is then a free view.
        x = x.contiguous(memory_format=torch.channels_last)
        n, _, h, w = x.shape
        s, e, c = self.num_sources, self.num_edges, self.c
        replicated = (F.relu(x).permute(0, 2, 3, 1).view(n, h, w, s, 1, c).expand(n, h, w, s, e, c)
                      .reshape(n, h, w, s * e * c).permute(0, 3, 1, 2))
        total = None
        for k, name in enumerate(self.primitives):
            if name == "none":
                continue
            if name in CONV_OPS:
                out = self._conv_op(name, replicated)
            elif name == "skip_connect" and self.stride == 2:
                out = self._reduce_skip(replicated)
            elif name == "max_pool_3x3":  # pools and identity see the same input on every edge
                out = self.bns[name](F.max_pool2d(x, 3, self.stride, 1))
            elif name == "avg_pool_3x3":
                out = self.bns[name](F.avg_pool2d(x, 3, self.stride, 1, count_include_pad=False))
            else:
                out = x
            term = self._weighted(out, weights[:, :, k])
            total = term if total is None else total + term
        return total

    def _weighted(self, out: torch.Tensor, op_weights: torch.Tensor) -> torch.Tensor:
        """``[N, (S*E or S)*C, H, W]`` op output -> ``[N, H, W, E, C]`` weighted and summed over sources."""
        n, _, h, w = out.shape
        s, e, c = self.num_sources, self.num_edges, self.c
        per_edge = out.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        per_edge = per_edge.reshape(n, h, w, s, -1, c)  # edge axis is 1 for shared ops: broadcast
        weighted = per_edge * op_weights.view(s, e, 1)
        return weighted.sum(3) if s > 1 else weighted.squeeze(3)

    def edge_ops(self, source: int, edge: int) -> nn.ModuleDict:
        """The plain per-op modules of one edge, carrying this bundle's weights and BN statistics."""
        g = source * self.num_edges + edge
        ops = nn.ModuleDict()
        dtype = next(iter(self.bns.values())).running_mean.dtype
        for name in self.primitives:
            ops[name] = op = make_op(name, self.c, self.stride, affine=False).to(dtype)
            if name in CONV_OPS:
                for stage, dil_conv in enumerate(op if name.startswith("sep") else [op]):
                    _, depthwise, pointwise, bn = dil_conv
                    self._copy_slice(depthwise.weight, f"{name}_dw{stage}", g)
                    self._copy_slice(pointwise.weight, f"{name}_pw{stage}", g)
                    self._copy_bn(bn, self.bns[f"{name}_bn{stage}"], g)
            elif name == "skip_connect" and self.stride == 2:
                self._copy_slice(op.conv_a.weight, "skip_a", g, self.c // 2)
                self._copy_slice(op.conv_b.weight, "skip_b", g, self.c // 2)
                self._copy_bn(op.bn, self.bns["skip_bn"], g)
            elif name in POOL_OPS:
                op = nn.Sequential(op, nn.BatchNorm2d(self.c, affine=False).to(dtype))
                self._copy_bn(op[1], self.bns[name], source)
                ops[name] = op
        return ops

    def _copy_slice(self, target: torch.Tensor, key: str, group: int, width: int | None = None) -> None:
        width = width or self.c
        with torch.no_grad():
            target.copy_(self.conv_params[key][group * width : (group + 1) * width])

    def _copy_bn(self, target: nn.BatchNorm2d, source: nn.BatchNorm2d, group: int) -> None:
        part = slice(group * self.c, (group + 1) * self.c)
        target.running_mean.copy_(source.running_mean[part])
        target.running_var.copy_(source.running_var[part])
        target.num_batches_tracked.copy_(source.num_batches_tracked)


class SearchCell(nn.Module):
    """A DARTS cell whose edges are grouped into bundles by source node."""

    def __init__(self, steps: int, multiplier: int, c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool, primitives=PRIMITIVES):
        super().__init__()
        self.steps, self.multiplier, self.reduction = steps, multiplier, reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(c_prev_prev, c, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0, affine=False)
        stride = 2 if reduction else 1
        # bundle 0: both cell inputs, one edge to every node; bundle j: node j-1's edges to later nodes
        self.bundles = nn.ModuleList([EdgeBundle(c, 2, steps, stride, primitives)])
        self.bundles.extend(EdgeBundle(c, 1, steps - 1 - node, 1, primitives) for node in range(steps - 1))
        rows = {pair: k for k, pair in enumerate(edge_index(steps))}
        self.register_buffer("rows_inputs", torch.tensor([[rows[(t, s)] for t in range(steps)] for s in (0, 1)]),
                             persistent=False)
        for node in range(steps - 1):
            source = node + 2
            index = torch.tensor([[rows[(t, source)] for t in range(node + 1, steps)]])
            self.register_buffer(f"rows_node{node}", index, persistent=False)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([self.preprocess0(s0), self.preprocess1(s1)], dim=1)
        partial = list(self.bundles[0](inputs, weights[self.rows_inputs]).unbind(3))
        states = []
        for node in range(self.steps):
            states.append(partial[node].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))
            if node == self.steps - 1:
                break
            contributions = self.bundles[node + 1](states[-1], weights[getattr(self, f"rows_node{node}")])
            for offset, contribution in enumerate(contributions.unbind(3)):
                partial[node + 1 + offset] = partial[node + 1 + offset] + contribution
        return torch.cat(states[-self.multiplier:], dim=1)


def softmax_relaxation(alpha: torch.Tensor) -> torch.Tensor:
    """DARTS' continuous relaxation: a softmax over each edge's ops."""
    return torch.softmax(alpha, dim=-1)


class SearchNetwork(nn.Module):
    """The DARTS search network: stem, cells (reductions at 1/3 and 2/3 depth), classifier.

    ``alpha_normal`` and ``alpha_reduce`` are the architecture parameters (one row per edge,
    one column per primitive); everything else is the weights w.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, C: int = 16, layers: int = 8,
                 steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3, stem_stride: int = 1,
                 primitives=PRIMITIVES, relaxation: Callable[[torch.Tensor], torch.Tensor] = softmax_relaxation):
        super().__init__()
        if layers < 1 or C < 2 or C % 2:
            raise ValueError(f"search_space needs layers >= 1 and an even C >= 2, got C={C}, layers={layers}")
        self.steps, self.multiplier, self.primitives = steps, multiplier, tuple(primitives)
        self.relaxation = relaxation
        # what a discrete network derived from this supernet needs to have the same shape
        self.network_shape = dict(in_channels=in_channels, num_classes=num_classes, C=C, layers=layers,
                                  stem_multiplier=stem_multiplier, stem_stride=stem_stride)
        c_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(c_curr))
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for layer in range(layers):
            reduction = layer in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(SearchCell(steps, multiplier, c_prev_prev, c_prev, c_curr, reduction,
                                         reduction_prev, primitives))
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, multiplier * c_curr
        self.classifier = nn.Linear(c_prev, num_classes)
        num_edges = len(edge_index(steps))
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(num_edges, len(self.primitives)))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(num_edges, len(self.primitives)))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normal = self.relaxation(self.alpha_normal)
        reduce = self.relaxation(self.alpha_reduce)
        s0 = s1 = self.stem(x.contiguous(memory_format=torch.channels_last))
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))

    def genotype(self) -> Genotype:
        return derive_genotype(self.alpha_normal, self.alpha_reduce, self.steps, self.multiplier, self.primitives)

    def derived_network(self) -> "GenotypeNetwork":
        """The discrete network of the current genotype at this supernet's size (fresh weights)."""
        return GenotypeNetwork(self.genotype(), **self.network_shape)
