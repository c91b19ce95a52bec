"""FedNAS (He, Annavaram, Avestimehr): clients search with MiLeNAS' mixed-level update.

Local update, as the paper writes it (and as neither FedNAS code base implements it):
    w     <- w     - lr_w * grad_w L_tr(w, alpha)
    alpha <- alpha - lr_a * (grad_a L_tr(w, alpha) + lambda * grad_a L_val(w, alpha))
with L_val on the client's own validation split, and gradient clipping on w (not alpha).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from federated_nas.algorithms.base import OptimizerFactory, cosine_lr
from federated_nas.algorithms.nas import ArchitectureSearch, SupernetAlgorithm
from federated_nas.data.federated_data import ClientData
from federated_nas.data.loaders import paired_loader
from federated_nas.search_space.supernet import SearchNetwork


class MiLeNASSearch(ArchitectureSearch):
    """One client's local search: a w step and an alpha step per (train, val) batch pair."""

    def __init__(self, model: SearchNetwork, w_optimizer: OptimizerFactory, alpha_optimizer: OptimizerFactory,
                 lr: float, val_lambda: float, grad_clip: float | None):
        super().__init__(model, w_optimizer, alpha_optimizer, lr, grad_clip)
        self.val_lambda = val_lambda

    def local_step(self, batch) -> torch.Tensor:
        self.zero_grads()
        train_loss = self.loss(batch["train"])
        self.manual_backward(train_loss)  # grad_w L_tr and grad_a L_tr
        if self.val_lambda:
            val_loss = self.loss(batch["val"])  # at the same (w, alpha): nothing has stepped yet
            self.manual_backward(self.val_lambda * val_loss, inputs=self.model.arch_parameters())
        self.step()
        return train_loss


class FedNAS(SupernetAlgorithm):
    """Server-side view of FedNAS: a DARTS supernet whose w and alpha are both averaged."""

    name = "fednas"

    def __init__(self, search_space: Callable[..., SearchNetwork], w_optimizer: OptimizerFactory,
                 alpha_optimizer: OptimizerFactory, lr: float = 0.025, lr_min: float = 0.001,
                 val_lambda: float = 1.0, grad_clip: float | None = 5.0):
        super().__init__(search_space)
        self.w_optimizer, self.alpha_optimizer = w_optimizer, alpha_optimizer
        self.lr, self.lr_min, self.val_lambda, self.grad_clip = lr, lr_min, val_lambda, grad_clip

    def local_module(self, model: SearchNetwork, round_idx: int, rounds: int) -> MiLeNASSearch:
        lr = cosine_lr(self.lr, self.lr_min, round_idx, rounds)
        return MiLeNASSearch(model, self.w_optimizer, self.alpha_optimizer, lr, self.val_lambda, self.grad_clip)

    def client_loader(self, client: ClientData, batch_size: int, seed: int) -> Iterable:
        """Train batches paired with val batches; the val loader cycles if it is the shorter one."""
        return paired_loader(client.train, client.val, ("train", "val"), batch_size, seed)

