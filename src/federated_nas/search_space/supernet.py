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

import copy
import itertools
import math
import torch
import torch.nn.functional as F
from torch import nn

from federated_nas.search_space.architecture import MASKED, RelaxedArchitecture  # noqa: F401  (MASKED: re-exported)
from federated_nas.search_space.genotypes import CELL_KINDS, Genotype, derive_genotype, edge_index
from federated_nas.search_space.network import GenotypeNetwork, make_stem, stack_cells
from federated_nas.search_space.relaxations import SoftmaxRelaxation
from federated_nas.search_space.operations import PRIMITIVES, FactorizedReduce, ReLUConvBN, half_grid, make_op

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

    ``active[s, e, k]`` says whether op k of edge (s, e) exists. Pruning an op removes its
    weights from the model for real: each op's grouped convolution holds only its active
    edges, and an op active nowhere in the bundle is neither stored nor computed.
    """

    def __init__(self, c: int, num_sources: int, num_edges: int, stride: int, primitives=PRIMITIVES):
        super().__init__()
        self.c, self.num_sources, self.num_edges, self.stride = c, num_sources, num_edges, stride
        self.primitives = tuple(primitives)
        for name in self.primitives:
            if name not in PRIMITIVES:
                raise ValueError(f"unknown operation {name!r}; known: {', '.join(PRIMITIVES)}")
        self.register_buffer("active", torch.ones(num_sources, num_edges, len(self.primitives), dtype=torch.bool))
        self.conv_params = nn.ParameterDict()
        self.bns = nn.ModuleDict()
        self._build(kept={})

    def _per_edge(self, name: str) -> bool:
        """Ops with weights of their own on every edge (the rest see the same input on each edge)."""
        return name in CONV_OPS or (name == "skip_connect" and self.stride == 2)

    def _group_list(self, k: int) -> list[int]:
        return [int(g) for g in self.active[:, :, k].flatten().nonzero().flatten()]

    def _build(self, kept: dict[str, list[int]]) -> None:
        """Create each op's weights for its active edges; ``kept[name]`` maps new group -> old group."""
        old_params, old_bns = dict(self.conv_params), dict(self.bns)
        self.conv_params, self.bns = nn.ParameterDict(), nn.ModuleDict()
        groups_of = {}
        c = self.c
        for k, name in enumerate(self.primitives):
            groups = self._group_list(k)
            groups_of[name] = groups
            if name == "none" or not groups:
                continue
            if name in CONV_OPS:
                kernel, _, stages = CONV_OPS[name]
                for stage in range(stages):
                    self._param(f"{name}_dw{stage}", len(groups) * c, 1, kernel, old_params, kept.get(name), c)
                    self._param(f"{name}_pw{stage}", len(groups) * c, c, 1, old_params, kept.get(name), c)
                    self._bn(f"{name}_bn{stage}", len(groups) * c, old_bns, kept.get(name))
            elif self._per_edge(name):
                self._param("skip_a", len(groups) * c // 2, c, 1, old_params, kept.get(name), c // 2)
                self._param("skip_b", len(groups) * c // 2, c, 1, old_params, kept.get(name), c // 2)
                self._bn("skip_bn", len(groups) * c, old_bns, kept.get(name))
            elif name in POOL_OPS:
                self._bn(name, self.num_sources * c, old_bns, None)
        for k, name in enumerate(self.primitives):
            index = torch.tensor(groups_of[name], dtype=torch.long)
            self.register_buffer(f"groups_{k}", index, persistent=False)
        self._full = {k: len(groups_of[name]) == self.num_sources * self.num_edges
                      for k, name in enumerate(self.primitives)}
        self._group_keys = {k: tuple(groups_of[name]) for k, name in enumerate(self.primitives)}
        self.bns.train(self.training)  # rebuilt BatchNorms follow the bundle's mode

    def _param(self, key, out_channels, in_per_group, kernel, old, kept, width) -> None:
        if kept is not None and key in old:  # surviving groups keep their values; no RNG is drawn
            self.conv_params[key] = nn.Parameter(_take_groups(old[key].detach(), kept, width).clone())
        else:
            self.conv_params[key] = _conv_weight(out_channels, in_per_group, kernel)

    def _bn(self, key, channels, old, kept) -> None:
        bn = nn.BatchNorm2d(channels, affine=False)
        if key in old:
            previous = old[key]
            with torch.no_grad():
                if kept is None:
                    bn.load_state_dict(previous.state_dict())
                else:
                    bn.running_mean.copy_(_take_groups(previous.running_mean, kept, self.c))
                    bn.running_var.copy_(_take_groups(previous.running_var, kept, self.c))
                    bn.num_batches_tracked.copy_(previous.num_batches_tracked)
        self.bns[key] = bn

    def _float_dtype(self) -> torch.dtype:
        floats = (t.dtype for t in (*self.parameters(), *self.buffers()) if t.is_floating_point())
        return next(floats, torch.get_default_dtype())  # a bundle pruned to identity ops holds no tensors

    def prune(self, active: torch.Tensor) -> None:
        """Keep only the (source, edge, op) triples that are True in ``active`` (never revives one)."""
        active = active.to(self.active.device) & self.active
        if torch.equal(active, self.active):
            return
        old_groups = {name: self._group_list(k) for k, name in enumerate(self.primitives)}
        self.active.copy_(active)
        kept = {}
        for k, name in enumerate(self.primitives):
            position = {g: i for i, g in enumerate(old_groups[name])}
            kept[name] = [position[g] for g in self._group_list(k)]
        device, dtype = self.active.device, self._float_dtype()
        self._build(kept)
        self.to(device=device, dtype=dtype)  # rebuilt modules follow the bundle's device and precision

    def _weight(self, key: str, positions: torch.Tensor | None, width: int | None = None) -> torch.Tensor:
        """An op's grouped conv weight, or only the rows of the groups at ``positions`` (a sampled subset)."""
        param = self.conv_params[key]
        if positions is None:
            return param
        return param.index_select(0, _group_channels(positions, width or self.c).to(param.device))

    def _batch_norm(self, key: str, y: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """The op's BatchNorm, or its channels of the groups at ``positions`` (their statistics alone move)."""
        bn = self.bns[key]
        if positions is None:
            return bn(y)
        channels = _group_channels(positions, self.c).to(bn.running_mean.device)
        mean, var = bn.running_mean[channels], bn.running_var[channels]
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked + 1)
        out = F.batch_norm(y, mean, var, None, None, bn.training, momentum, bn.eps)
        if bn.training:  # F.batch_norm updated the gathered copies; write them back
            with torch.no_grad():
                bn.running_mean.index_copy_(0, channels, mean)
                bn.running_var.index_copy_(0, channels, var)
                bn.num_batches_tracked.add_(1)
        return out

    def _conv_op(self, name: str, replicated: torch.Tensor, groups: int,
                 positions: torch.Tensor | None = None) -> torch.Tensor:
        kernel, dilation, stages = CONV_OPS[name]
        y = replicated
        for stage in range(stages):
            if stage:
                y = F.relu(y)
            pad = dilation * (kernel - 1) // 2
            y = F.conv2d(y, self._weight(f"{name}_dw{stage}", positions), None, 1, pad, dilation, groups * self.c)
            if stage == 0 and self.stride == 2:
                # same values as a stride-2 conv, but CPU backends have no fast strided depthwise kernel
                y = y[:, :, ::2, ::2]
            y = F.conv2d(y, self._weight(f"{name}_pw{stage}", positions), None, 1, 0, 1, groups)
            y = self._batch_norm(f"{name}_bn{stage}", y, positions)
        return y

    def _reduce_skip(self, replicated: torch.Tensor, groups: int, positions: torch.Tensor | None = None
                     ) -> torch.Tensor:
        half = self.c // 2
        # stride 2 as a 1x1 conv on each half grid (see half_grid: oneDNN's strided 1x1 kernel is unsafe)
        a = F.conv2d(half_grid(replicated, 0), self._weight("skip_a", positions, half), None, 1, 0, 1, groups)
        b = F.conv2d(half_grid(replicated, 1), self._weight("skip_b", positions, half), None, 1, 0, 1, groups)
        n, _, h, w = a.shape
        both = torch.stack([a.view(n, groups, half, h, w), b.view(n, groups, half, h, w)], dim=2)
        return self._batch_norm("skip_bn", both.view(n, groups * self.c, h, w), positions)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, skip_zero: bool = False) -> torch.Tensor:
        """``skip_zero``: ops whose weight is exactly 0 on an edge are not computed there.

        Meant for one-hot relaxations (DSNAS' sampled child, FedRLNAS' fixed child), whose zero
        weights carry no gradient either, so outputs and gradients are unchanged; it reads the
        weights on the host, so dense relaxations leave it off.
        """
        # Channels-last throughout: CPU depthwise convolutions are several times faster in it,
        # and splitting the channel axis into (source, edge, channel) is then a free view.
        x = x.contiguous(memory_format=torch.channels_last)
        n, _, h, w = x.shape
        s, e, c = self.num_sources, self.num_edges, self.c
        relu_sources = F.relu(x).permute(0, 2, 3, 1).view(n, h, w, s, c)
        replicated_inputs: dict[tuple[int, ...], torch.Tensor] = {}  # ops on the same edges share one copy
        nonzero = weights.detach().flatten(0, 1).ne(0).cpu() if skip_zero else None  # [S*E, ops]
        total = None
        for k, name in enumerate(self.primitives):
            groups = getattr(self, f"groups_{k}")
            if name == "none" or not len(groups):
                continue
            if nonzero is not None and not nonzero[:, k].any():
                continue
            if self._per_edge(name):
                positions = None
                if nonzero is not None:
                    live = nonzero[list(self._group_keys[k]), k]
                    if not live.all():
                        positions = live.nonzero().flatten()
                term = self._per_edge_term(name, k, relu_sources, weights, groups, replicated_inputs, positions)
            else:  # pools and identity see the same input on every edge: computed once per source
                if name == "max_pool_3x3":
                    out = self.bns[name](F.max_pool2d(x, 3, self.stride, 1))
                elif name == "avg_pool_3x3":
                    out = self.bns[name](F.avg_pool2d(x, 3, self.stride, 1, count_include_pad=False))
                else:
                    out = x
                shared = out.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
                shared = shared.reshape(*shared.shape[:3], s, 1, c)
                term = (shared * weights[:, :, k].reshape(s, e, 1)).sum(3)
            total = term if total is None else total + term
        if total is None:  # every op of every edge pruned: the bundle contributes nothing
            stride = self.stride
            return x.new_zeros(n, (h + stride - 1) // stride, (w + stride - 1) // stride, e, c)
        return total

    def _per_edge_term(self, name, k, relu_sources, weights, groups, replicated_inputs,
                       positions: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted output of one per-edge op on its active edges, as ``[N, H', W', E, C]``.

        ``positions``: compute the op only on these of its groups (the others have weight 0).
        """
        n, h, w, s, c = relu_sources.shape
        full = self._full[k] and positions is None
        if positions is not None:
            groups = groups[positions.to(groups.device)]
            key = tuple(self._group_keys[k][int(p)] for p in positions)
        else:
            key = self._group_keys[k]
        e, count = self.num_edges, len(groups)
        sources, edges = groups // e, groups % e
        if key not in replicated_inputs:  # the input of every active edge, side by side in the channels
            if full:
                chosen = relu_sources.unsqueeze(4).expand(n, h, w, s, e, c)
            else:
                chosen = relu_sources.index_select(3, sources)
            replicated_inputs[key] = chosen.reshape(n, h, w, count * c).permute(0, 3, 1, 2)
        replicated = replicated_inputs[key]
        if name in CONV_OPS:
            out = self._conv_op(name, replicated, count, positions)
        else:
            out = self._reduce_skip(replicated, count, positions)
        out = out.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        out = out.reshape(*out.shape[:3], count, c) * weights[sources, edges, k].view(count, 1)
        if full and s == 1:
            return out
        return out.new_zeros(*out.shape[:3], e, c).index_add(3, edges, out)

    def edge_ops(self, source: int, edge: int) -> nn.ModuleDict:
        """The plain per-op modules of one edge (its active ops), carrying this bundle's weights and BN statistics."""
        g = source * self.num_edges + edge
        ops = nn.ModuleDict()
        dtype = self._float_dtype()
        for k, name in enumerate(self.primitives):
            if not self.active[source, edge, k]:
                continue
            ops[name] = op = make_op(name, self.c, self.stride, affine=False).to(dtype)
            position = self._group_list(k).index(g) if self._per_edge(name) else None
            if name in CONV_OPS:
                for stage, dil_conv in enumerate(op if name.startswith("sep") else [op]):
                    _, depthwise, pointwise, bn = dil_conv
                    self._copy_slice(depthwise.weight, f"{name}_dw{stage}", position)
                    self._copy_slice(pointwise.weight, f"{name}_pw{stage}", position)
                    self._copy_bn(bn, self.bns[f"{name}_bn{stage}"], position)
            elif self._per_edge(name):
                self._copy_slice(op.conv_a.weight, "skip_a", position, self.c // 2)
                self._copy_slice(op.conv_b.weight, "skip_b", position, self.c // 2)
                self._copy_bn(op.bn, self.bns["skip_bn"], position)
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


def _group_channels(positions: torch.Tensor, width: int) -> torch.Tensor:
    """Row indices of the groups at ``positions`` in a tensor of ``width`` rows per group."""
    return (positions.view(-1, 1) * width + torch.arange(width)).flatten()


def _take_groups(tensor: torch.Tensor, groups: list[int], width: int) -> torch.Tensor:
    """The rows of ``tensor`` belonging to the listed groups of ``width`` rows each, in order."""
    if not groups:
        return tensor[:0]
    index = torch.cat([torch.arange(g * width, (g + 1) * width) for g in groups]).to(tensor.device)
    return tensor.index_select(0, index)


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
    state dict carries its own structure (see ``match_structure``).
    """

    arch_kinds = CELL_KINDS
    input_ndim = 3  # [C, H, W] images
    compute_every_op = False  # True: ops of zero weight are computed too (recalibrate_batch_norm)

    def __init__(self, in_channels: int = 3, num_classes: int = 10, C: int = 16, layers: int = 8,
                 steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3, stem_stride: int = 1,
                 primitives=PRIMITIVES, relaxation: nn.Module | None = None,
                 input_combinations: int | None = None):
        super().__init__()
        if layers < 1 or C < 2 or C % 2:
            raise ValueError(f"search_space needs layers >= 1 and an even C >= 2, got C={C}, layers={layers}")
        self.steps, self.multiplier, self.primitives = steps, multiplier, tuple(primitives)
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
        normal, reduce = self.op_weights("normal"), self.op_weights("reduce")
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
        live = {kind: getattr(self, f"alpha_{kind}").masked_fill(~getattr(self, f"op_mask_{kind}"), MASKED)
                for kind in CELL_KINDS}
        return derive_genotype(live["normal"], live["reduce"], self.steps, self.multiplier, self.primitives,
                               chosen={kind: self.chosen_sources(kind) for kind in CELL_KINDS})

    def derived_network(self) -> "GenotypeNetwork":
        """The discrete network of the current genotype at this supernet's size (fresh weights)."""
        return GenotypeNetwork(self.genotype(), **self.network_shape)

    # --- pruning (masks, match_structure: RelaxedArchitecture) ----------------------------------
    def prune_to(self, masks: dict[str, torch.Tensor]) -> None:
        """Adopt the given masks (never reviving a removed choice) and drop the removed ops' modules."""
        self.adopt_masks(masks)
        for kind in CELL_KINDS:
            active = getattr(self, f"op_mask_{kind}").clone()
            if self.combinations is not None:  # an edge in no live combination is gone entirely
                live = getattr(self, f"combo_mask_{kind}").to(self.combo_incidence.dtype)
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
