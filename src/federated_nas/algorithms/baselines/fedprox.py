"""FedProx (Li et al., 2020): FedAvg with a proximal term that keeps each client near the global model.

On heterogeneous clients, many local steps drift each client toward its own optimum; the term
(mu/2)||w - w_global||^2 in the local loss bounds that drift. With mu = 0 it is FedAvg.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from federated_nas.algorithms.baselines.fedavg import FedAvg
from federated_nas.algorithms.core.base import ClientTask, OptimizerFactory
from federated_nas.algorithms.core.local_module import SupervisedTraining
from federated_nas.errors import ConfigError


class ProximalTraining(SupervisedTraining):
    """Local SGD on the classification loss plus (mu/2)||w - w_global||^2.

    w_global is the model the client received this round, snapshotted when its local fit starts
    (after Lightning has moved the model to its device). Only the trained weights are anchored,
    not BatchNorm's running statistics, which no gradient moves.
    """

    def __init__(self, model: nn.Module, w_optimizer: OptimizerFactory, lr: float, grad_clip: float | None,
                 mu: float):
        super().__init__(model, w_optimizer, lr, grad_clip)
        self.mu = mu
        self.global_weights: list[torch.Tensor] = []

    def on_train_start(self) -> None:
        super().on_train_start()
        self.global_weights = [w.detach().clone() for w in self.weight_parameters()]

    def proximal_term(self) -> torch.Tensor:
        squared_distance = sum((w - w_global).pow(2).sum()
                               for w, w_global in zip(self.weight_parameters(), self.global_weights))
        return 0.5 * self.mu * squared_distance

    def loss(self, batch) -> torch.Tensor:
        return super().loss(batch) + self.proximal_term()


class FedProx(FedAvg):
    """FedAvg's server, clients that minimise the proximal local objective."""


    def __init__(self, model: Callable[..., nn.Module] | None, optimizer: OptimizerFactory, lr: float = 0.025,
                 lr_min: float = 0.001, grad_clip: float | None = 5.0, mu: float = 0.01, adapt_steps: int = 5,
                 adapt_lr: float = 0.025):
        if not mu >= 0:
            raise ConfigError(f"algorithm.mu must be >= 0 (0 is FedAvg), got {mu}")
        super().__init__(model, optimizer, lr, lr_min, grad_clip, adapt_steps, adapt_lr)
        self.mu = float(mu)

    def local_module(self, model: nn.Module, task: ClientTask) -> ProximalTraining:
        return ProximalTraining(model, self.optimizer, self.local_lr(task.plan), self.grad_clip, self.mu)
