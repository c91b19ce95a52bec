"""FedDSNAS: DSNAS (Hu et al. 2020) as the clients' local search, FedAvg over w and alpha.

Each local step samples one op per edge (hard Gumbel, ``HardGumbelRelaxation``) and computes
that child alone: the supernet skips every op whose weight is exactly zero, so a step costs
about what the sampled child network costs. w and alpha move together on the train loss
(single-level, as DSNAS; ``val_lambda`` > 0 adds MiLeNAS' val term). There is no retraining:
the final model is the supernet's most likely child (every edge's argmax op), which is what
evaluation computes, with the weights the search trained.

Additions for small budgets (``warmup: 0``, ``bn_recalibration_batches: 0`` and
``tempered_sampling: false`` turn them off):
- warm-up, as DSNAS and SPOS do: for the first ``warmup`` fraction of the rounds alpha stays at its
  near-uniform start, so every op's weights are trained before the sampling narrows;
- BatchNorm recalibration for the evaluated child (SPOS): after its local search each client
  recomputes the statistics under its argmax child, on its own train batches; the training steps
  saw random children, so their running statistics fit no single one;
- tempered sampling: children are drawn from softmax(alpha / T) with T annealed, so the sampling
  narrows to the argmax child and the late rounds train the child that is shipped.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from federated_nas.algorithms.core.base import ClientTask, OptimizerFactory
from federated_nas.algorithms.core.local_steps import MiLeNASSearch
from federated_nas.algorithms.core.local_steps import RecalibrateBatchNorm
from federated_nas.algorithms.core.schedules import TemperatureSchedule, as_component
from federated_nas.algorithms.core.supernet_methods import check_recalibration_batches, check_warmup, warming_up
from federated_nas.algorithms.nas.fednas import FedNAS
from federated_nas.search_space.relaxations import HardGumbelRelaxation
from federated_nas.search_space.supernet import SearchNetwork


class FedDSNAS(FedNAS):
    """FedNAS' loop and update with DSNAS' sampled, straight-through relaxation; ships the most likely child."""


    def __init__(self, search_space: Callable[..., SearchNetwork], w_optimizer: OptimizerFactory,
                 alpha_optimizer: OptimizerFactory, temperature: TemperatureSchedule | Mapping | None = None,
                 val_lambda: float = 0.0, warmup: float = 0.0, bn_recalibration_batches: int = 0,
                 tempered_sampling: bool = False, final_model: str = "most_likely_child", **fednas_options: Any):
        """``temperature`` None: DSNAS' constant 1."""
        super().__init__(search_space, w_optimizer, alpha_optimizer, val_lambda=val_lambda, final_model=final_model,
                         **fednas_options)
        self.temperature = as_component(TemperatureSchedule, temperature) or TemperatureSchedule(1.0, 1.0)
        self.warmup = check_warmup(warmup)
        self.bn_recalibration_batches = check_recalibration_batches(bn_recalibration_batches)
        self.tempered_sampling = bool(tempered_sampling)

    def supernet_options(self) -> dict[str, Any]:
        return {"relaxation": HardGumbelRelaxation(self.temperature.start, self.tempered_sampling)}

    def local_module(self, model: SearchNetwork, task: ClientTask) -> MiLeNASSearch:
        plan = task.plan
        module = super().local_module(model, task)
        module.alpha_frozen = warming_up(self.warmup, plan.round_idx, plan.rounds)
        if self.bn_recalibration_batches:
            module.callbacks.append(RecalibrateBatchNorm(self.bn_recalibration_batches, train_inputs))
        return module


def train_inputs(pair: dict) -> Any:
    return pair["train"][0]
