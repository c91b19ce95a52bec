"""Ditto (Li et al., 2021): a global model trained by FedAvg, and beside it one personal model per client.

Each client keeps its own model v across rounds and, at every local step, moves it along its own
loss plus a pull of strength lambda toward the global model it received this round:
v <- v - lr_p (grad L(v) + lambda (v - w_global)). The global model is trained exactly as in
FedAvg and only it is sent back and averaged; lambda trades personal fit against the benefit of
the federation (lambda = 0: purely local models).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from federated_nas.algorithms.baselines.fedavg import FedAvg
from federated_nas.algorithms.core.base import ClientTask, OptimizerFactory, State, classification_loss
from federated_nas.algorithms.core.local_module import SupervisedTraining
from federated_nas.errors import ConfigError


class DittoTraining(SupervisedTraining):
    """FedAvg's local SGD on w, and the personal step on v on the same batch.

    v lives in a copy of the model made when the fit starts (on the fit's device), loaded from
    what the client kept last time, or equal to the received model on its first round. Its whole
    state is kept, BatchNorm statistics included, so they stay the client's own too.
    """

    def __init__(self, model: nn.Module, w_optimizer: OptimizerFactory, lr: float, grad_clip: float | None,
                 lam: float, personal_lr: float, personal: State | None = None):
        super().__init__(model, w_optimizer, lr, grad_clip)
        self.lam, self.personal_lr = lam, personal_lr
        self.personal = dict(personal or {})  # v as the client kept it; empty on its first round
        self.global_weights: list[torch.Tensor] = []
        self.personal_model: nn.Module | None = None

    def on_train_start(self) -> None:
        super().on_train_start()
        self.global_weights = [w.detach().clone() for w in self.model.parameters()]
        self.personal_model = copy.deepcopy(self.model)
        if self.personal:
            self.personal_model.load_state_dict(self.personal)

    def on_train_end(self) -> None:
        super().on_train_end()
        self.personal = {k: v.detach().clone() for k, v in self.personal_model.state_dict().items()}

    def local_step(self, batch) -> torch.Tensor:
        loss = super().local_step(batch)  # w: what the server averages
        self.personal_step(batch)
        return loss

    def personal_step(self, batch) -> None:
        personal = list(self.personal_model.parameters())
        found = torch.autograd.grad(classification_loss(self.personal_model, batch), personal, allow_unused=True)
        with torch.no_grad():
            for v, grad, w_global in zip(personal, found, self.global_weights):
                step = self.lam * (v - w_global)
                if grad is not None:
                    step += grad
                v.sub_(self.personal_lr * step)


class Ditto(FedAvg):
    """FedAvg's server; clients that also train their personal model, which personalization evaluates."""


    def __init__(self, model: Callable[..., nn.Module] | None, optimizer: OptimizerFactory, lr: float = 0.025,
                 lr_min: float = 0.001, grad_clip: float | None = 5.0, lam: float = 0.1,
                 personal_lr: float | None = None):
        if not lam >= 0:
            raise ConfigError(f"algorithm.lam must be >= 0 (0: purely local personal models), got {lam}")
        if personal_lr is not None and not personal_lr > 0:
            raise ConfigError(f"algorithm.personal_lr must be positive or null (the local lr), got {personal_lr}")
        super().__init__(model, optimizer, lr, lr_min, grad_clip)
        self.lam = float(lam)
        self.personal_lr = None if personal_lr is None else float(personal_lr)

    def local_module(self, model: nn.Module, task: ClientTask) -> DittoTraining:
        lr = self.local_lr(task.plan)
        return DittoTraining(model, self.optimizer, lr, self.grad_clip, self.lam,
                             lr if self.personal_lr is None else self.personal_lr, task.personal)

    def personalization_budget(self) -> str:
        return "personal model: every local step of the rounds a client takes part in"

    def adapt(self, model: nn.Module, task: ClientTask) -> nn.Module:
        """The client's personal model v; the global model for a client that never trained."""
        adapted = copy.deepcopy(model)
        if task.personal:
            adapted.load_state_dict(task.personal)
        return adapted.eval()
