"""The op-by-op DARTS supernet, kept as the reference the batched supernet is checked against.

It computes every op of every edge as its own module and takes the weighted sum op by op,
including the ``none`` op as a tensor of zeros, as DARTS, MiLeNAS and FedML do. It is built
from a ``SearchNetwork`` so both hold the same weights, relaxation, input combinations and
pruning masks; the architecture weights come from the very same ``op_weights`` code, so the
comparison isolates the cell computation. Tests compare outputs and gradients and the
benchmark compares throughput.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from federated_nas.search_space.genotypes import edge_index
from federated_nas.search_space.supernet import SearchCell, SearchNetwork


class MixedOp(nn.Module):
    """Weighted sum of the candidate ops on one edge, one module per op (pruned ops are absent)."""

    def __init__(self, ops: nn.ModuleDict, primitives: tuple[str, ...]):
        super().__init__()
        self.ops = ops
        self.columns = [primitives.index(name) for name in ops]

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(weights[k] * op(x) for k, op in zip(self.columns, self.ops.values()))


class ReferenceCell(nn.Module):
    """A ``SearchCell`` unrolled into one ``MixedOp`` per edge with the same weights."""

    def __init__(self, cell: SearchCell):
        super().__init__()
        self.steps, self.multiplier, self.reduction = cell.steps, cell.multiplier, cell.reduction
        self.preprocess0 = copy.deepcopy(cell.preprocess0)
        self.preprocess1 = copy.deepcopy(cell.preprocess1)
        self.edges = nn.ModuleList()
        for node, source in edge_index(cell.steps):
            if source < 2:
                ops = cell.bundles[0].edge_ops(source, node)
            else:
                ops = cell.bundles[source - 1].edge_ops(0, node - (source - 1))
            self.edges.append(MixedOp(ops, cell.bundles[0].primitives))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        row = 0
        for node in range(self.steps):
            states.append(sum(self.edges[row + j](h, weights[row + j]) for j, h in enumerate(states)))
            row += len(states) - 1
        return torch.cat(states[-self.multiplier:], dim=1)


class ReferenceSearchNetwork(nn.Module):
    """The same network as a given ``SearchNetwork``, computed op by op."""

    # the architecture weights are computed by the supernet's own code, not a second copy of it
    _relax = SearchNetwork._relax
    combination_weights = SearchNetwork.combination_weights
    op_weights = SearchNetwork.op_weights
    arch_parameters = SearchNetwork.arch_parameters
    weight_parameters = SearchNetwork.weight_parameters

    def __init__(self, network: SearchNetwork):
        super().__init__()
        self.relaxation = copy.deepcopy(network.relaxation)
        self.stem = copy.deepcopy(network.stem)
        self.cells = nn.ModuleList(ReferenceCell(cell) for cell in network.cells)
        self.classifier = copy.deepcopy(network.classifier)
        self.combinations, self.combo_slices = network.combinations, getattr(network, "combo_slices", None)
        self.tie_cells = network.tie_cells
        for name, value in network.named_parameters(recurse=False):
            setattr(self, name, nn.Parameter(value.detach().clone()))
        for name, value in network.named_buffers(recurse=False):
            self.register_buffer(name, value.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normal = self.op_weights("normal")
        reduce = normal if self.tie_cells else self.op_weights("reduce")
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))
