"""FedDSNAS: DSNAS (Hu et al. 2020) as the clients' local search, FedAvg over w and alpha.

Each local step samples one op per edge (hard Gumbel, ``HardGumbelRelaxation``) and computes
that child alone: the supernet skips every op whose weight is exactly zero, so a step costs
about what the sampled child network costs. w and alpha move together on the train loss
(single-level, as DSNAS; ``val_lambda`` > 0 adds MiLeNAS' val term). There is no retraining:
the final model is the supernet's most likely child (every edge's argmax op), which is what
evaluation computes, with the weights the search trained.
"""

from __future__ import annotations

from typing import Any, Callable

from federated_nas.algorithms.base import OptimizerFactory
from federated_nas.algorithms.fednas import FedNAS, MiLeNASSearch
from federated_nas.algorithms.nas import AnnealedTemperature, MostLikelyChild
from federated_nas.search_space.relaxations import HardGumbelRelaxation
from federated_nas.search_space.supernet import SearchNetwork


class FedDSNAS(MostLikelyChild, AnnealedTemperature, FedNAS):
    """FedNAS' loop and update with DSNAS' sampled, straight-through relaxation."""

    name = "feddsnas"

    def __init__(self, search_space: Callable[..., SearchNetwork], w_optimizer: OptimizerFactory,
                 alpha_optimizer: OptimizerFactory, temperature: dict | None = None, val_lambda: float = 0.0,
                 **fednas_options: Any):
        FedNAS.__init__(self, search_space, w_optimizer, alpha_optimizer, val_lambda=val_lambda, **fednas_options)
        AnnealedTemperature.__init__(self, temperature, start=1.0, end=1.0)

    def supernet_options(self) -> dict[str, Any]:
        return {"relaxation": HardGumbelRelaxation(self.temperature["start"])}

    def local_module(self, model: SearchNetwork, round_idx: int, rounds: int) -> MiLeNASSearch:
        self.set_temperature(model, round_idx, rounds)
        return super().local_module(model, round_idx, rounds)

    def after_aggregation(self, model: SearchNetwork, round_idx: int, rounds: int) -> dict[str, Any]:
        return {"temperature": self.set_temperature(model, round_idx, rounds)}
