"""The discrete network a genotype describes: what the FedNAS train stage trains with FedAvg."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from federated_nas.errors import ConfigError
from federated_nas.models.budget import count_parameters, sized
from federated_nas.search_space.genotypes import Genotype, random_genotype
from federated_nas.search_space.operations import FactorizedReduce, ReLUConvBN, make_op


class GenotypeCell(nn.Module):
    """A cell with one op per genotype edge; each node sums the edges listed for it."""

    def __init__(self, edges: list[tuple[str, int]], concat: list[int], c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool, inputs_per_node: int = 2):
        super().__init__()
        self.reduction, self.concat, self.inputs_per_node = reduction, list(concat), inputs_per_node
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(c_prev_prev, c, affine=True)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0, affine=True)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0, affine=True)
        self.sources = [source for _, source in edges]
        self.ops = nn.ModuleList(
            make_op(name, c, 2 if reduction and source < 2 else 1, affine=True) for name, source in edges
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for first in range(0, len(self.ops), self.inputs_per_node):
            edges = range(first, first + self.inputs_per_node)
            states.append(sum(self.ops[k](states[self.sources[k]]) for k in edges))
        return torch.cat([states[i] for i in self.concat], dim=1)


def make_stem(in_channels: int, channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False), nn.BatchNorm2d(channels))


def stack_cells(layers: int, C: int, stem_channels: int, make_cell) -> tuple[nn.ModuleList, int]:
    """DARTS' macro-architecture: channels double at the reductions (1/3 and 2/3 depth), and each
    cell reads the outputs of the two cells before it.

    ``make_cell(c_prev_prev, c_prev, c, reduction, reduction_prev)`` returns the cell and how many
    node outputs it concatenates; returns the cells and the last cell's output channels.
    """
    cells = nn.ModuleList()
    c_prev_prev = c_prev = stem_channels
    c, reduction_prev = C, False
    for layer in range(layers):
        reduction = layer in (layers // 3, 2 * layers // 3)
        if reduction:
            c *= 2
        cell, width = make_cell(c_prev_prev, c_prev, c, reduction, reduction_prev)
        cells.append(cell)
        reduction_prev = reduction
        c_prev_prev, c_prev = c_prev, width * c
    return cells, c_prev


class GenotypeNetwork(nn.Module):
    """DARTS' evaluation network: stem, genotype cells with reductions at 1/3 and 2/3 depth, classifier."""

    def __init__(self, genotype: Genotype | dict | str | Path, in_channels: int = 3, num_classes: int = 10,
                 C: int = 36, layers: int = 20, stem_multiplier: int = 3, stem_stride: int = 1):
        super().__init__()
        if genotype is None:
            raise ConfigError("model=genotype needs model.genotype=<genotype.json> (train.py fills it from search_run)")
        if isinstance(genotype, (str, Path)):
            genotype = Genotype.load(genotype)
        elif isinstance(genotype, dict) or not isinstance(genotype, Genotype):
            genotype = Genotype.from_dict(dict(genotype))
        self.genotype = genotype
        self.stem = make_stem(in_channels, stem_multiplier * C, stem_stride)

        def make_cell(c_prev_prev, c_prev, c, reduction, reduction_prev):
            edges, concat = ((genotype.reduce, genotype.reduce_concat) if reduction
                             else (genotype.normal, genotype.normal_concat))
            return GenotypeCell(edges, concat, c_prev_prev, c_prev, c, reduction, reduction_prev), len(concat)

        self.cells, c_prev = stack_cells(layers, C, stem_multiplier * C, make_cell)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


RANDOM = "random"  # model.genotype=random: a seeded, uniformly random genotype of the space


def genotype_network(genotype: Genotype | dict | str | Path | None, in_channels: int = 3, num_classes: int = 10,
                     C: int = 36, layers: int = 20, stem_multiplier: int = 3, stem_stride: int = 1, steps: int = 4,
                     multiplier: int = 4, genotype_seed: int = 0, budget_params: int | None = None) -> GenotypeNetwork:
    """The ``model=genotype`` network: a searched genotype (a genotype.json), or ``random`` (the space's
    ``steps`` and ``multiplier``, drawn with ``genotype_seed``); with ``budget_params``, C is chosen so the
    network has about that many parameters (``layers`` kept), so cells are compared at equal size."""
    if genotype == RANDOM:
        genotype = random_genotype(int(genotype_seed), steps, multiplier)

    def build(width: int) -> GenotypeNetwork:
        return GenotypeNetwork(genotype, in_channels, num_classes, width, layers, stem_multiplier, stem_stride)

    return sized(build, C, budget_params, f"a {layers}-layer genotype network", "C")
