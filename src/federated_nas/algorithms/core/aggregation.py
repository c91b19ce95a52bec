"""Server-side aggregation: sample-count weighted averages of client states.

The weights are normalised over the clients that actually reported in this round (not over
all clients, which is FedML's defect), and every entry of the state is averaged, including
the architecture parameters (FedML keeps client 0's alphas) and BatchNorm statistics.
"""

from __future__ import annotations

import math

import torch

from federated_nas.errors import DataError

State = dict[str, torch.Tensor]


class WeightedAverage:
    """Streaming weighted mean of states: add each client's update as it arrives, read once.

    One flat float64 buffer holds the running sum of every entry; each client's tensors are
    added in place into their slice of it (type promotion happens inside ``add_``, so no
    temporary copy of an update is made). Integer buffers (BatchNorm's ``num_batches_tracked``)
    are averaged in floating point and rounded back, so a counter stays a counter.
    """

    def __init__(self, template: State):
        self._template = {k: (v.shape, v.dtype) for k, v in template.items()}
        self._sum = torch.zeros(sum(v.numel() for v in template.values()), dtype=torch.float64)
        self._slices = dict(zip(self._template, self._sum.split([v.numel() for v in template.values()])))
        self.total_weight = 0.0
        self.count = 0

    def add(self, state: State, weight: float, report: State | None = None) -> None:
        """Add one client's state; an average reads the model alone, so a client's ``report`` is not used."""
        check_update(state, self._template)
        check_weight(weight)
        for key, running in self._slices.items():
            running.add_(state[key].detach().reshape(-1).cpu(), alpha=float(weight))
        self.total_weight += float(weight)
        self.count += 1

    def result(self) -> State:
        if not self.count:
            raise DataError("no client update to aggregate in this round")
        mean = self._mean()
        averaged = {}
        for (key, (shape, dtype)), flat in zip(self._template.items(), mean.split([s.numel() for s in
                                                                                   self._slices.values()])):
            averaged[key] = (flat if dtype.is_floating_point else flat.round()).to(dtype).reshape(shape)
        return averaged

    def _mean(self) -> torch.Tensor:
        """The flat float64 mean of every entry."""
        return self._sum / self.total_weight


class MaskedAverage(WeightedAverage):
    """Per-entry weighted mean over the clients that used each entry; an entry nobody used keeps its value.

    For methods whose clients train different parts of one model (FedRLNAS' sampled children):
    averaging an entry with clients that never trained it would drag it toward stale copies.
    ``masks[key]`` (bool, the entry's shape) marks what a client used; a key without a mask
    counts as used everywhere, so with no masks at all this is the plain weighted mean.
    """

    def __init__(self, template: State):
        super().__init__(template)
        self._global = torch.cat([v.detach().reshape(-1).cpu().to(torch.float64) for v in template.values()]) \
            if template else torch.zeros(0, dtype=torch.float64)
        self._weight_sum = torch.zeros_like(self._sum)
        self._weight_slices = dict(zip(self._template, self._weight_sum.split([s.numel() for s in
                                                                                self._slices.values()])))

    def check(self, state: State) -> None:
        """Reject an update that does not fit the global model (before reading anything from it)."""
        check_update(state, self._template)

    def add(self, state: State, weight: float, masks: State | None = None) -> None:
        self.check(state)
        masks = masks or {}
        for key, mask in masks.items():
            if key not in self._template or mask.shape != self._template[key][0]:
                raise DataError(f"participation mask of {key!r} does not match the model's entry")
        check_weight(weight)
        for key, running in self._slices.items():
            value = state[key].detach().reshape(-1).cpu()
            mask = masks.get(key)
            if mask is None:
                running.add_(value, alpha=float(weight))
                self._weight_slices[key].add_(float(weight))
            else:
                used = mask.reshape(-1).cpu().to(torch.bool)
                running.add_(torch.where(used, value.to(torch.float64), 0.0), alpha=float(weight))
                self._weight_slices[key].add_(used.to(torch.float64), alpha=float(weight))
        self.total_weight += float(weight)
        self.count += 1

    def _mean(self) -> torch.Tensor:
        used = self._weight_sum > 0
        return torch.where(used, self._sum / self._weight_sum.clamp_min(1e-300), self._global)


def check_weight(weight: float) -> None:
    if not weight > 0 or not math.isfinite(weight):
        raise DataError(f"client weight must be a positive number, got {weight}")


def check_update(state: State, template: dict[str, tuple[torch.Size, torch.dtype]]) -> None:
    """Reject an update whose keys, shapes or dtypes differ from the global model, or that is not finite."""
    missing, extra = set(template) - set(state), set(state) - set(template)
    if missing or extra:
        raise DataError(f"client update keys differ from the global model: missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(extra)[:3]}")
    for key, (shape, dtype) in template.items():
        value = state[key]
        if value.shape != shape or value.dtype != dtype:
            raise DataError(f"client update {key!r} is {tuple(value.shape)} {value.dtype}, "
                            f"expected {tuple(shape)} {dtype}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise DataError(f"client update {key!r} holds NaN or infinite values")


def clip_update(state: State, reference: State, keys: list[str], max_norm: float) -> State:
    """Scale a client's update (state - reference, over the trained entries ``keys``) to L2 norm <= max_norm.

    Bounds what one client (faulty or malicious) can move the aggregate; buffers such as BatchNorm
    statistics are passed through unchanged.
    """
    deltas = {k: state[k].detach().cpu().double() - reference[k].detach().cpu().double() for k in keys}
    norm = math.sqrt(sum(float(d.pow(2).sum()) for d in deltas.values()))
    if not math.isfinite(norm):
        raise DataError("client update holds NaN or infinite values")
    if norm <= max_norm:
        return state
    scale = max_norm / norm
    clipped = dict(state)
    for key, delta in deltas.items():
        clipped[key] = (reference[key].detach().cpu().double() + scale * delta).to(state[key].dtype)
    return clipped


def weighted_average(states: list[State], weights: list[float]) -> State:
    """The weighted mean of whole states, weights normalised over the given clients."""
    accumulator = WeightedAverage(states[0])
    for state, weight in zip(states, weights):
        accumulator.add(state, weight)
    return accumulator.result()


def load_state(model: torch.nn.Module, state: State) -> None:
    """Load a global state into a model, first adopting its structure if it was pruned since."""
    match_structure = getattr(model, "match_structure", None)
    if match_structure is not None:
        match_structure(state)
    model.load_state_dict(state)
