"""The DARTS supernet: cells of edge bundles (``edge_bundle``), the relaxation, pruning and derivation.

The cell computes its 14 mixed edges bundle by bundle, one bundle per source node, instead of op
by op; the function is DARTS' mixed op, and ``search_space/reference.py`` keeps the op-by-op
network that the tests compare it against.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from federated_nas.errors import ConfigError
from federated_nas.search_space.architecture import MASKED, RelaxedArchitecture  # noqa: F401  (MASKED: re-exported)
from federated_nas.search_space.edge_bundle import EdgeBundle
from federated_nas.search_space.genotypes import CELL_KINDS, Genotype, derive_genotype, edge_index
from federated_nas.search_space.network import GenotypeNetwork, make_stem, stack_cells
from federated_nas.search_space.relaxations import SoftmaxRelaxation
from federated_nas.search_space.operations import PRIMITIVES, FactorizedReduce, ReLUConvBN


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

    def bundle_rows(self) -> list[torch.Tensor]:
        """Per bundle, the ``[S, E]`` alpha rows of its edges."""
        return [self.rows_inputs] + [getattr(self, f"rows_node{node}") for node in range(self.steps - 1)]

    def prune(self, op_active: torch.Tensor) -> None:
        """Remove every op that ``op_active`` (``[edges, ops]``, alpha row order) marks False."""
        for bundle, rows in zip(self.bundles, self.bundle_rows()):
            bundle.prune(op_active[rows])

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, skip_zero: bool = False
                ) -> torch.Tensor:
        rows = self.bundle_rows()
        inputs = torch.cat([self.preprocess0(s0), self.preprocess1(s1)], dim=1)
        partial = list(self.bundles[0](inputs, weights[rows[0]], skip_zero).unbind(3))
        states = []
        for node in range(self.steps):
            states.append(partial[node].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))
            if node == self.steps - 1:
                break
            contributions = self.bundles[node + 1](states[-1], weights[rows[node + 1]], skip_zero)
            for offset, contribution in enumerate(contributions.unbind(3)):
                partial[node + 1 + offset] = partial[node + 1 + offset] + contribution
        return torch.cat(states[-self.multiplier:], dim=1)


def node_input_combinations(steps: int, k: int) -> list[tuple[int, tuple[int, ...]]]:
    """(node, sources) for every k-combination of every intermediate node's predecessors."""
    return [(node, combo) for node in range(steps) for combo in itertools.combinations(range(node + 2), k)]


class SearchNetwork(RelaxedArchitecture, nn.Module):
    """The DARTS search network: stem, cells (reductions at 1/3 and 2/3 depth), classifier.

    Architecture parameters: ``alpha_<kind>`` (one row per edge, one column per primitive)
    and, with ``input_combinations=k`` (FedMetaNAS' input-node soft pruning, its Eq. 8),
    ``beta_<kind>`` over the k-combinations of each node's predecessors; an edge's op weights
    are then scaled by the total weight of the combinations that contain it. Everything else
    is the weights w. Removed choices are recorded in the ``*_mask_*`` buffers, so a pruned
    state dict carries its own structure (see ``match_structure``). ``tie_cells``: the reduction
    cells use the normal cell's architecture too, so the space is one cell (``federated_nas.bench``).
    """

    arch_kinds = CELL_KINDS
    input_ndim = 3  # [C, H, W] images
    compute_every_op = False  # True: ops of zero weight are computed too (recalibrate_batch_norm)

    def __init__(self, in_channels: int = 3, num_classes: int = 10, C: int = 16, layers: int = 8,
                 steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3, stem_stride: int = 1,
                 primitives=PRIMITIVES, relaxation: nn.Module | None = None,
                 input_combinations: int | None = None, tie_cells: bool = False):
        super().__init__()
        if layers < 1 or C < 2 or C % 2:
            raise ConfigError(f"search_space.C must be even and >= 2 (each cell splits its channels in two) and "
                              f"search_space.layers >= 1, got C={C}, layers={layers}")
        self.steps, self.multiplier, self.primitives = steps, multiplier, tuple(primitives)
        # one searched cell in every layer (the tabular benchmark's space): the reduction cells run the normal
        # cell's weights, children and masks, and alpha_reduce (kept so every method's code is unchanged) is inert
        self.tie_cells = bool(tie_cells)
        self.relaxation = relaxation if relaxation is not None else SoftmaxRelaxation()
        # what a discrete network derived from this supernet needs to have the same shape
        self.network_shape = dict(in_channels=in_channels, num_classes=num_classes, C=C, layers=layers,
                                  stem_multiplier=stem_multiplier, stem_stride=stem_stride)
        self.stem = make_stem(in_channels, stem_multiplier * C, stem_stride)

        def make_cell(c_prev_prev, c_prev, c, reduction, reduction_prev):
            return SearchCell(steps, multiplier, c_prev_prev, c_prev, c, reduction, reduction_prev,
                              primitives), multiplier

        self.cells, c_prev = stack_cells(layers, C, stem_multiplier * C, make_cell)
        self.classifier = nn.Linear(c_prev, num_classes)
        num_edges = len(edge_index(steps))
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(num_edges, len(self.primitives)))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(num_edges, len(self.primitives)))
        for kind in CELL_KINDS:
            self.register_buffer(f"op_mask_{kind}", torch.ones(num_edges, len(self.primitives), dtype=torch.bool))
        self.combinations = node_input_combinations(steps, input_combinations) if input_combinations else None
        if self.combinations is not None:
            rows = {pair: k for k, pair in enumerate(edge_index(steps))}
            incidence = torch.zeros(num_edges, len(self.combinations))
            for c, (node, sources) in enumerate(self.combinations):
                for source in sources:
                    incidence[rows[(node, source)], c] = 1.0
            self.register_buffer("combo_incidence", incidence, persistent=False)
            self.combo_slices = [[c for c, (n, _) in enumerate(self.combinations) if n == node] for node in range(steps)]
            self.beta_normal = nn.Parameter(1e-3 * torch.randn(len(self.combinations)))
            self.beta_reduce = nn.Parameter(1e-3 * torch.randn(len(self.combinations)))
            for kind in CELL_KINDS:
                self.register_buffer(f"combo_mask_{kind}", torch.ones(len(self.combinations), dtype=torch.bool))

    # --- parameters -------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        params = [self.alpha_normal, self.alpha_reduce]
        if self.combinations is not None:
            params += [self.beta_normal, self.beta_reduce]
        return params

    # --- relaxed weights (op_probabilities, without the input-combination factor: RelaxedArchitecture) ----
    def combination_weights(self, kind: str, deterministic: bool = False) -> torch.Tensor:
        """Relaxed weight of every input combination, normalised within each node."""
        beta, mask = getattr(self, f"beta_{kind}"), getattr(self, f"combo_mask_{kind}")
        # combinations are listed node by node, so the per-node pieces concatenate in order
        return torch.cat([self._relax(beta[index], mask[index], deterministic) for index in self.combo_slices])

    def op_weights(self, kind: str, deterministic: bool = False) -> torch.Tensor:
        """``[edges, ops]`` weights the cells use: relaxed alpha, times the edge's combination weight."""
        weights = self._relax(getattr(self, f"alpha_{kind}"), getattr(self, f"op_mask_{kind}"), deterministic, kind)
        if self.combinations is not None:
            weights = weights * (self.combo_incidence @ self.combination_weights(kind, deterministic)).unsqueeze(1)
        return weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normal = self.op_weights("normal")
        reduce = normal if self.tie_cells else self.op_weights("reduce")  # tied: the same sample, not a second
        # a sampled child: compute its ops alone (but every op while BatchNorm is recalibrated)
        skip_zero = getattr(self.relaxation, "one_hot", False) and not self.compute_every_op
        s0 = s1 = self.stem(x.contiguous(memory_format=torch.channels_last))
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal, skip_zero)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))

    # --- architecture ------------------------------------------------------------------------
    def chosen_sources(self, kind: str) -> list[tuple[int, ...]] | None:
        """With input combinations: each node's strongest live combination of inputs."""
        if self.combinations is None:
            return None
        return [self.combinations[c][1] for c in self._strongest_combinations(kind)]

    def _strongest_combinations(self, kind: str) -> list[int]:
        """Per node, the index of its heaviest live combination (ties: the first)."""
        weights = self.combination_weights(kind, deterministic=True).detach()
        return [max(index, key=lambda c: (float(weights[c]), -c)) for index in self.combo_slices]

    def genotype(self) -> Genotype:
        """DARTS' derivation over the live ops (removed ones have masked logits)."""
        kinds = {kind: "normal" if self.tie_cells else kind for kind in CELL_KINDS}  # tied: reduce = normal
        live = {kind: getattr(self, f"alpha_{arch}").masked_fill(~getattr(self, f"op_mask_{arch}"), MASKED)
                for kind, arch in kinds.items()}
        return derive_genotype(live["normal"], live["reduce"], self.steps, self.multiplier, self.primitives,
                               chosen={kind: self.chosen_sources(arch) for kind, arch in kinds.items()})

    def derived_network(self) -> "GenotypeNetwork":
        """The discrete network of the current genotype at this supernet's size (fresh weights)."""
        return GenotypeNetwork(self.genotype(), **self.network_shape)

    # --- pruning (masks, match_structure: RelaxedArchitecture) ----------------------------------
    def prune_to(self, masks: dict[str, torch.Tensor]) -> None:
        """Adopt the given masks (never reviving a removed choice) and drop the removed ops' modules."""
        self.adopt_masks(masks)
        for kind in CELL_KINDS:
            arch = "normal" if self.tie_cells else kind  # tied: every cell runs the normal cell's live ops
            active = getattr(self, f"op_mask_{arch}").clone()
            if self.combinations is not None:  # an edge in no live combination is gone entirely
                live = getattr(self, f"combo_mask_{arch}").to(self.combo_incidence.dtype)
                active &= (self.combo_incidence @ live > 0).unsqueeze(1)
            for cell in self.cells:
                if (kind == "reduce") == cell.reduction:
                    cell.prune(active)

    def prune(self, threshold: float) -> dict[str, int]:
        """Remove every op and input combination whose deterministic weight is under ``threshold``.

        An edge's strongest non-none op and a node's strongest combination always stay, so the
        genotype is unchanged by pruning and every node keeps its inputs.
        """
        masks, removed = self.masks(), {"ops": 0, "combinations": 0}
        for kind in CELL_KINDS:
            kept = self.kept_ops(kind, threshold)
            removed["ops"] += int((masks[f"op_mask_{kind}"] & ~kept).sum())
            masks[f"op_mask_{kind}"] = kept
            if self.combinations is not None:
                combo_mask = masks[f"combo_mask_{kind}"]
                weights = self.combination_weights(kind, deterministic=True).detach()
                keep = weights >= threshold
                keep[self._strongest_combinations(kind)] = True
                removed["combinations"] += int((combo_mask & ~keep).sum())
                masks[f"combo_mask_{kind}"] = combo_mask & keep
        self.prune_to(masks)
        return removed

    def discretized(self) -> "SearchNetwork":
        """A copy keeping only the genotype's ops, with this network's trained weights (no retraining)."""
        genotype, discrete = self.genotype(), copy.deepcopy(self)
        masks = {name: torch.zeros_like(mask) for name, mask in self.masks().items()}
        rows = {pair: k for k, pair in enumerate(edge_index(self.steps))}
        for kind, genes in (("normal", genotype.normal), ("reduce", genotype.reduce)):
            per_node = len(genes) // self.steps
            for position, (op, source) in enumerate(genes):
                masks[f"op_mask_{kind}"][rows[(position // per_node, source)], self.primitives.index(op)] = True
            if self.combinations is not None:
                for node, sources in enumerate(self.chosen_sources(kind)):
                    masks[f"combo_mask_{kind}"][self.combinations.index((node, sources))] = True
        discrete.prune_to(masks)
        return discrete
