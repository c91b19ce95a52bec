"""Per-FedAvg (Fallah, Mokhtari, Ozdaglar, 2020), first-order variant: FedAvg of a MAML start point.

The global model is trained to be a good starting point for one local SGD step rather than a
good model itself. A local step uses two different batches D1, D2 of the client's train split
(the val split stays unused, as for the other fixed-network methods, so all see the same data):
    temp <- w - alpha * grad L(w; D1)
    w    <- w - beta  * grad L(temp; D2)      (first order: the gradient at temp, applied to w)
Personalization is what the objective was trained for: ``adapt_steps`` SGD steps at alpha.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from federated_nas.algorithms.baselines.fedavg import FedAvg
from federated_nas.algorithms.core.base import ClientTask, OptimizerFactory
from federated_nas.algorithms.core.local_module import LocalModule
from federated_nas.algorithms.core.local_steps import first_order_weight_step
from federated_nas.data.loaders import paired_loader
from federated_nas.errors import ConfigError


class FirstOrderMetaStep(LocalModule):
    """One client's Per-FedAvg local work: per (D1, D2) batch pair, an inner step then the meta step."""

    def __init__(self, model: nn.Module, w_optimizer: OptimizerFactory, lr: float, inner_lr: float,
                 grad_clip: float | None):
        super().__init__(model, w_optimizer, lr, grad_clip)
        self.inner_lr = inner_lr

    def local_step(self, batch) -> torch.Tensor:
        # w -> temp on D1, then grad L(temp; D2) applied at w: first-order MAML with D1, D2 as support, query
        return first_order_weight_step(self, {"support": batch["inner"], "query": batch["outer"]}, 1, self.inner_lr)


class PerFedAvg(FedAvg):
    """FedAvg's server and network; clients take first-order MAML steps; adaptation is one step at alpha."""


    def __init__(self, model: Callable[..., nn.Module] | None, optimizer: OptimizerFactory, lr: float = 0.025,
                 lr_min: float = 0.001, inner_lr: float = 0.01, grad_clip: float | None = 5.0,
                 adapt_steps: int = 1):
        if not inner_lr > 0:
            raise ConfigError(f"algorithm.inner_lr (Per-FedAvg's alpha) must be > 0, got {inner_lr}")
        # the adaptation Per-FedAvg optimizes for: SGD at the inner rate alpha (FedAvg.adapt does it)
        super().__init__(model, optimizer, lr, lr_min, grad_clip, adapt_steps=adapt_steps, adapt_lr=inner_lr)
        self.inner_lr = inner_lr

    def local_module(self, model: nn.Module, task: ClientTask) -> FirstOrderMetaStep:
        return FirstOrderMetaStep(model, self.optimizer, self.local_lr(task.plan), self.inner_lr,
                                  self.grad_clip)

    def client_loader(self, task: ClientTask) -> Iterable:
        """Two independently shuffled passes over the train split, paired: D1 and D2 of each step differ."""
        return paired_loader(task.client.train, task.client.train, ("inner", "outer"), task.plan.batch_size, task.seed)
