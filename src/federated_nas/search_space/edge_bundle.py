"""One ``EdgeBundle``: every mixed edge that leaves one node of a DARTS cell, computed at once.

Why: a DARTS cell has 14 mixed edges of 8 ops; computed one module at a time that is hundreds of
small, memory-bound kernels per cell, and on a CPU the step is dominated by them. Here all edges
that leave the same source node form one bundle: the ReLU is applied once, every conv op of every
edge is one grouped convolution, the pooling ops (whose affine-free BatchNorm sees the same input
on every edge, so gives the same output) are computed once per source, and ``none`` is not computed
at all. The function is the same as DARTS' op-by-op mixed op; ``EdgeBundle.edge_ops`` rebuilds the
plain per-edge modules with the same weights, which the tests compare against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from federated_nas.search_space.depthwise import batch_norm_keeping_output, depthwise_pointwise
from federated_nas.errors import ConfigError
from federated_nas.search_space.operations import PRIMITIVES, half_grid, make_op


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
                raise ConfigError(f"search_space.primitives: unknown operation {name!r}; known: {', '.join(PRIMITIVES)}")
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

    def _batch_norm(self, key: str, y: torch.Tensor, positions: torch.Tensor | None,
                    scale: torch.Tensor | None = None, keep_output: bool = False) -> torch.Tensor:
        """The op's BatchNorm, or its channels of the groups at ``positions`` (their statistics alone move).

        ``scale`` (one per group): the ops' mixing weights, applied as the normalisation's per-channel
        factor, so the weighted output costs no separate multiplication (its gradient reaches the weights
        through the factor). ``keep_output``: the backward keeps the output, not the input (see
        ``batch_norm_keeping_output``); for an output that a fused stage will keep anyway.
        """
        bn = self.bns[key]
        channels = None if positions is None else _group_channels(positions, self.c).to(bn.running_mean.device)
        mean = bn.running_mean if channels is None else bn.running_mean[channels]
        var = bn.running_var if channels is None else bn.running_var[channels]
        if bn.training:
            bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        if keep_output and scale is None and bn.training and torch.is_grad_enabled() and y.requires_grad:
            out = batch_norm_keeping_output(y, mean, var, momentum, bn.eps)
        else:
            factor = None if scale is None else scale.repeat_interleave(self.c)
            out = F.batch_norm(y, mean, var, factor, None, bn.training, momentum, bn.eps)
        if bn.training and channels is not None:  # the normalisation updated the gathered copies; write them back
            with torch.no_grad():
                bn.running_mean.index_copy_(0, channels, mean)
                bn.running_var.index_copy_(0, channels, var)
        return out

    def _conv_op(self, name: str, replicated: torch.Tensor, groups: int,
                 positions: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                 even_grid: torch.Tensor | None = None) -> torch.Tensor:
        """``even_grid``: ``replicated``'s even rows and columns, shared by the ops of a stride-2 bundle that read
        only those (see ``_even_grid``)."""
        kernel, dilation, stages = CONV_OPS[name]
        y = replicated
        for stage in range(stages):
            pad = dilation * (kernel - 1) // 2
            stride = self.stride if stage == 0 else 1
            y = depthwise_pointwise(y, self._weight(f"{name}_dw{stage}", positions),
                                    self._weight(f"{name}_pw{stage}", positions), pad, dilation, stride, groups,
                                    relu=stage > 0, even_grid=even_grid if stage == 0 else None)
            last = stage == stages - 1
            y = self._batch_norm(f"{name}_bn{stage}", y, positions, scale if last else None, keep_output=not last)
        return y

    def _reduce_skip(self, replicated: torch.Tensor, groups: int, positions: torch.Tensor | None = None,
                     scale: torch.Tensor | None = None, even_grid: torch.Tensor | None = None) -> torch.Tensor:
        half = self.c // 2
        # stride 2 as a 1x1 conv on each half grid (see half_grid: oneDNN's strided 1x1 kernel is unsafe)
        even = half_grid(replicated, 0) if even_grid is None else even_grid
        a = F.conv2d(even, self._weight("skip_a", positions, half), None, 1, 0, 1, groups)
        b = F.conv2d(half_grid(replicated, 1), self._weight("skip_b", positions, half), None, 1, 0, 1, groups)
        n, _, h, w = a.shape
        both = torch.stack([a.view(n, groups, half, h, w), b.view(n, groups, half, h, w)], dim=2)
        return self._batch_norm("skip_bn", both.view(n, groups * self.c, h, w), positions, scale)

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
        replicated_inputs: dict[tuple, torch.Tensor] = {}  # ops on the same edges share one copy (and grid)
        nonzero = weights.detach().flatten(0, 1).ne(0).cpu() if skip_zero else None  # [S*E, ops]
        total, owned = None, False
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
                # the weighted sum over sources as one small matrix product: a broadcast product
                # [N, H, W, S, E, C] and its sum cost 2-5x more, forward and backward
                term = torch.einsum("nhwsc,se->nhwec", shared.reshape(*shared.shape[:3], s, c), weights[:, :, k])
            if total is None:
                total = term
            elif owned:  # our own sum, which no backward saves: added to in place, no new tensor per op
                total.add_(term)
            else:
                total, owned = total + term, True
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
        even_grid = self._even_grid(replicated, key, replicated_inputs)
        if name in CONV_OPS:
            out = self._conv_op(name, replicated, count, positions, weights[sources, edges, k], even_grid)
        else:
            out = self._reduce_skip(replicated, count, positions, weights[sources, edges, k], even_grid)
        out = out.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        out = out.reshape(*out.shape[:3], count, c)  # already weighted, by its last BatchNorm
        if full and s == 1:
            return out
        if full:  # every (source, edge): the groups are source-major, so the edges' sum over sources is a sum
            return out.view(*out.shape[:3], s, e, c).sum(3)
        return out.new_zeros(*out.shape[:3], e, c).index_add(3, edges, out)

    def _even_grid(self, replicated: torch.Tensor, key: tuple, shared: dict) -> torch.Tensor | None:
        """A stride-2 bundle's input at its even rows and columns, sliced once for the ops that read only those
        (the dilated convolutions and the reduce skip's first half): in the backward, their gradients then add
        up at a quarter of the size, and one slice backward (zeros, then a strided copy) is paid, not three."""
        if self.stride != 2:
            return None
        if (key, "even") not in shared:
            shared[(key, "even")] = half_grid(replicated, 0)  # offset 0: ceil(H/2) rows, never padded
        return shared[(key, "even")]

    def edge_ops(self, source: int, edge: int) -> nn.ModuleDict:
        """The plain per-op modules of one edge (its active ops), carrying this bundle's weights and BN statistics,
        on its device and in its precision."""
        g = source * self.num_edges + edge
        ops = nn.ModuleDict()
        placed = {"device": self.active.device, "dtype": self._float_dtype()}
        for k, name in enumerate(self.primitives):
            if not self.active[source, edge, k]:
                continue
            ops[name] = op = make_op(name, self.c, self.stride, affine=False).to(**placed)
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
                op = nn.Sequential(op, nn.BatchNorm2d(self.c, affine=False).to(**placed))
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
    return (positions.view(-1, 1) * width + torch.arange(width, device=positions.device)).flatten()


def _take_groups(tensor: torch.Tensor, groups: list[int], width: int) -> torch.Tensor:
    """The rows of ``tensor`` belonging to the listed groups of ``width`` rows each, in order."""
    if not groups:
        return tensor[:0]
    index = torch.cat([torch.arange(g * width, (g + 1) * width) for g in groups]).to(tensor.device)
    return tensor.index_select(0, index)
