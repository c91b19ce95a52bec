"""FedMetaNAS (Huang, Gao): a tempered relaxation, first-order MAML over (w, alpha), soft pruning.

Local search (the paper's Algorithm 1): each local step takes a support task (a batch of the
client's train split) and a query task (a batch of its val split); M inner SGD steps adapt a task
copy of (w, alpha) on the support task; the meta step moves the client's (w, alpha) along the
query-loss gradient taken at the adapted point (first-order MAML, Eq. 9-10). The op choice (and,
with ``input_combinations=k``, each node's choice among k-combinations of its inputs, Eq. 8) is
relaxed at an annealed temperature: MetaNAS' tempered softmax by default, the paper's Gumbel-softmax
(Eq. 1) with ``relaxation=gumbel``. Pruning is decided on the server's aggregated architecture, so
every client receives the same smaller model; the pruned supernet is the final model (no retraining).
"""

from __future__ import annotations

import copy
import functools
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch

from federated_nas.algorithms.core.base import (ClientTask, OptimizerFactory, classification_loss, cosine_lr,
                                          steps_after_rounds)
from federated_nas.algorithms.core.maml import MAMLSettings
from federated_nas.algorithms.core.schedules import PruningSchedule, TemperatureSchedule, as_component
from federated_nas.algorithms.core.supernet_methods import (SupernetAlgorithm, check_recalibration_batches,
                                         recalibrate_batch_norm)
from federated_nas.data.loaders import batch_loader, paired_loader
from federated_nas.errors import ConfigError
from federated_nas.search_space.relaxations import RELAXATIONS
from federated_nas.search_space.supernet import SearchNetwork

if TYPE_CHECKING:
    from federated_nas.algorithms.core.local_steps import MetaSearch


def support_inputs(task: dict) -> torch.Tensor:
    return task["support"][0]


class FedMetaNAS(SupernetAlgorithm):
    """Server-side view of FedMetaNAS: temperature schedule, pruning on the aggregate, personal adaptation.

    Its final model is the pruned supernet (``final_model: supernet``), with no retraining.
    """


    def __init__(self, search_space: Callable[..., SearchNetwork], w_optimizer: OptimizerFactory,
                 alpha_optimizer: OptimizerFactory, lr: float = 0.025, lr_min: float = 0.001,
                 maml: MAMLSettings | Mapping | None = None, relaxation: str = "softmax",
                 temperature: TemperatureSchedule | Mapping | None = None,
                 input_combinations: int | None = 2, pruning: PruningSchedule | Mapping | None = None,
                 adapt_steps: int = 5, grad_clip: float | None = 5.0, bn_recalibration_batches: int = 0,
                 final_model: str = "supernet"):
        """``maml`` None: ``MAMLSettings()``'s (one inner step, the paper's w update); ``temperature`` None: 1.0 ->
        0.1 linear over the rounds; ``pruning`` None: after 1/2 and 3/4 of the rounds at 0.01 (the paper's)."""
        super().__init__(search_space, TemperatureSchedule() if temperature is None else temperature,
                         PruningSchedule((0.5, 0.75)) if pruning is None else pruning, final_model)
        if relaxation not in RELAXATIONS:
            raise ConfigError(f"algorithm.relaxation must be one of {', '.join(RELAXATIONS)}, got {relaxation!r}")
        self.relaxation = relaxation
        self.maml: MAMLSettings = as_component(MAMLSettings, maml) or MAMLSettings()
        self.bn_recalibration_batches = check_recalibration_batches(bn_recalibration_batches)
        self.w_optimizer, self.alpha_optimizer = w_optimizer, alpha_optimizer
        self.lr, self.lr_min, self.grad_clip = lr, lr_min, grad_clip
        self.input_combinations, self.adapt_steps = input_combinations, adapt_steps

    def supernet_options(self) -> dict[str, Any]:
        return {"relaxation": RELAXATIONS[self.relaxation](self.temperature.temperature_at(0, 1)),
                "input_combinations": self.input_combinations}

    def local_module(self, model: SearchNetwork, task: ClientTask) -> MetaSearch:
        # Lightning, where clients train
        from federated_nas.algorithms.core.local_steps import MetaSearch, RecalibrateBatchNorm

        plan, maml = task.plan, self.maml
        module = MetaSearch(model, self.w_optimizer, self.alpha_optimizer,
                            cosine_lr(self.lr, self.lr_min, plan.round_idx, plan.rounds), maml.inner_steps,
                            maml.inner_lr_w, maml.inner_lr_alpha, self.grad_clip,
                            self.temperature.task_temperatures(maml.inner_steps), maml.w_keeps_support_steps)
        if self.bn_recalibration_batches:
            module.callbacks.append(RecalibrateBatchNorm(self.bn_recalibration_batches, support_inputs))
        return module

    def client_loader(self, task: ClientTask) -> Iterable:
        return paired_loader(task.client.train, task.client.val, ("support", "query"),
                             self.maml.task_batch_size(task.plan.batch_size), task.seed)

    def personalization_budget(self) -> str:
        return steps_after_rounds(self.adapt_steps, "MAML inner")

    def adapt(self, model: SearchNetwork, task: ClientTask) -> SearchNetwork:
        """Personalization: a few inner-loop steps on the client's own train split, from the meta-learned start."""
        from federated_nas.algorithms.core.local_steps import inner_steps, meta_parameters

        adapted = copy.deepcopy(model).train()
        params, rates = meta_parameters(adapted, self.maml.inner_lr_w, self.maml.inner_lr_alpha)
        device = params[0].device
        loader = batch_loader(task.client.train, self.maml.task_batch_size(task.plan.batch_size), shuffle=True,
                              seed=task.seed)
        batches = [(x.to(device), y.to(device)) for x, y in loader]
        batches = (batches * self.adapt_steps)[: self.adapt_steps]
        inner_steps(adapted, params, rates, batches, functools.partial(classification_loss, adapted))
        if self.bn_recalibration_batches:
            recalibrate_batch_norm(adapted, [x for x, _ in batches[: self.bn_recalibration_batches]])
        return adapted.eval()
