"""Networks sized to a parameter budget, so that architectures are compared at equal size, not at
whatever width their config happened to give.

A network family exposes one integer width (DARTS' C, a CNN's first channel count, an MLP's hidden
units) that its parameter count grows with; ``width_for_budget`` finds the width whose count is
nearest the budget, counting on the ``meta`` device, so no weights are allocated while it searches.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from federated_nas.errors import ConfigError

BUDGET_TOLERANCE = 0.10  # a network more than 10% off its budget is refused: widths too coarse to meet it
MAX_WIDTH = 4096


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of a state dict: what a federation sends of a model (weights and BatchNorm statistics)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def parameters_at(build: Callable[[int], nn.Module], width: int) -> int:
    with torch.device("meta"):
        return count_parameters(build(width))


def width_for_budget(build: Callable[[int], nn.Module], budget: int, what: str) -> int:
    """The width whose network (``build(width)``) has the parameter count nearest ``budget``.

    The count must grow with the width (it does for every family here); the search is a bisection
    over 1..MAX_WIDTH. ``what`` names the network in the one-line error of an unmeetable budget.
    """
    if parameters_at(build, 1) > budget * (1 + BUDGET_TOLERANCE):
        raise ConfigError(f"model.budget_params={budget}: {what} has {parameters_at(build, 1)} parameters "
                          f"even at width 1; raise the budget or lower the depth")
    low, high = 1, MAX_WIDTH  # invariant: parameters_at(low) <= budget < parameters_at(high), or high is the cap
    if parameters_at(build, high) <= budget:
        raise ConfigError(f"model.budget_params={budget}: {what} needs a width above {MAX_WIDTH}")
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if parameters_at(build, middle) <= budget else (low, middle)
    width = min((low, high), key=lambda w: abs(parameters_at(build, w) - budget))
    count = parameters_at(build, width)
    if abs(count - budget) > BUDGET_TOLERANCE * budget:
        raise ConfigError(f"model.budget_params={budget}: the nearest {what} has {count} parameters (width "
                          f"{width}), more than {BUDGET_TOLERANCE:.0%} off; change the depth")
    return width


def sized(build: Callable[[int], nn.Module], width: int, budget: int | None, what: str,
          knob: str) -> nn.Module:
    """``build(width)``, or at the width that meets ``budget``; the network keeps ``size_record``, what the
    run states about its size (the budget, the knob and width chosen, the count)."""
    if budget is not None:
        width = width_for_budget(build, int(budget), what)
    model = build(width)
    record: dict[str, Any] = {knob: width, "params": count_parameters(model)}
    if budget is not None:
        record["budget_params"] = int(budget)
    model.size_record = record
    return model
