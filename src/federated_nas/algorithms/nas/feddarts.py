"""FedDARTS: DARTS' first-order update on each client, the supernet averaged as in FedNAS.

Local update (DARTS' first-order approximation, xi = 0), both gradients at the same (w, alpha):
    w     <- w     - lr_w * grad_w L_train(w, alpha)
    alpha <- alpha - lr_a * grad_a L_val(w, alpha)
It differs from FedNAS' MiLeNAS step only in alpha's gradient, which leaves out grad_a L_train.
It is also the README's worked example of a new method: one module on the shared local-step
skeleton (``ArchitectureSearch``: two optimizers, w's gradient clipped, both stepped), the
supernet server (``SupernetAlgorithm``: build, average, derive, report), one YAML, one test file.
Like FedNAS, it ships the derived genotype (``final_model: discretized``), which ``src/train.py`` then
trains from scratch: a DARTS supernet is a search device, not a model to deploy.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from federated_nas.algorithms.core.base import ClientTask, OptimizerFactory, classification_loss, cosine_lr
from federated_nas.algorithms.core.local_steps import ArchitectureSearch
from federated_nas.algorithms.core.supernet_methods import SupernetAlgorithm
from federated_nas.data.loaders import paired_loader
from federated_nas.search_space.supernet import SearchNetwork


class FirstOrderDARTSSearch(ArchitectureSearch):
    """One client's local search: w down the train loss, alpha down the val loss, per batch pair."""

    def local_step(self, batch: dict) -> torch.Tensor:
        self.zero_grads()
        train_loss = classification_loss(self.model, batch["train"])
        self.manual_backward(train_loss, inputs=self.weight_parameters())
        val_loss = classification_loss(self.model, batch["val"])
        self.manual_backward(val_loss, inputs=self.model.arch_parameters())
        self.step()
        return train_loss


class FedDARTS(SupernetAlgorithm):
    """Server side: the supernet's w and alpha averaged by sample count (the default aggregation)."""

    def __init__(self, search_space: Callable[..., SearchNetwork], w_optimizer: OptimizerFactory,
                 alpha_optimizer: OptimizerFactory, lr: float = 0.025, lr_min: float = 0.001,
                 grad_clip: float | None = 5.0, final_model: str = "discretized"):
        super().__init__(search_space, final_model=final_model)
        self.w_optimizer, self.alpha_optimizer = w_optimizer, alpha_optimizer
        self.lr, self.lr_min, self.grad_clip = lr, lr_min, grad_clip

    def local_module(self, model: SearchNetwork, task: ClientTask) -> FirstOrderDARTSSearch:
        lr = cosine_lr(self.lr, self.lr_min, task.plan.round_idx, task.plan.rounds)
        return FirstOrderDARTSSearch(model, self.w_optimizer, self.alpha_optimizer, lr, self.grad_clip)

    def client_loader(self, task: ClientTask) -> Iterable:
        return paired_loader(task.client.train, task.client.val, ("train", "val"), task.plan.batch_size, task.seed)
