"""FedNAS (He, Annavaram, Avestimehr): clients search with MiLeNAS' mixed-level update.

Local update, as the paper writes it (and as neither FedNAS code base implements it):
    w     <- w     - lr_w * grad_w L_tr(w, alpha)
    alpha <- alpha - lr_a * (grad_a L_tr(w, alpha) + lambda * grad_a L_val(w, alpha))
with L_val on the client's own validation split, and gradient clipping on w (not alpha).

Personalization (``personalize=true``) keeps searching on each client alone after the federated
search, with the same update and plain SGD, so every client ends with its own (w, alpha) and so
its own genotype.
"""

from __future__ import annotations

import copy
import functools
import itertools
from typing import TYPE_CHECKING, Callable, Iterable

import torch

from federated_nas.algorithms.core.base import ClientTask, OptimizerFactory, cosine_lr, steps_after_rounds
from federated_nas.algorithms.core.supernet_methods import SupernetAlgorithm
from federated_nas.data.federated_data import ClientData
from federated_nas.data.loaders import paired_loader
from federated_nas.errors import ConfigError
from federated_nas.search_space.supernet import SearchNetwork

if TYPE_CHECKING:
    from federated_nas.algorithms.core.local_steps import MiLeNASSearch


def train_val_pairs(client: ClientData, batch_size: int, seed: int) -> Iterable:
    """Train batches paired with val batches; the val loader cycles if it is the shorter one."""
    return paired_loader(client.train, client.val, ("train", "val"), batch_size, seed)


class FedNAS(SupernetAlgorithm):
    """Server-side view of FedNAS: a DARTS supernet whose w and alpha are both averaged.

    Its final model is the derived genotype (``final_model: discretized``), which the second stage,
    ``src/train.py``, trains from scratch with FedAvg.
    """


    def __init__(self, search_space: Callable[..., SearchNetwork], w_optimizer: OptimizerFactory,
                 alpha_optimizer: OptimizerFactory, lr: float = 0.025, lr_min: float = 0.001,
                 val_lambda: float = 1.0, grad_clip: float | None = 5.0, adapt_steps: int = 5,
                 adapt_lr_w: float = 0.025, adapt_lr_alpha: float = 0.003, final_model: str = "discretized"):
        super().__init__(search_space, final_model=final_model)
        if adapt_steps < 0:
            raise ConfigError(f"algorithm.adapt_steps must be >= 0, got {adapt_steps}")
        self.w_optimizer, self.alpha_optimizer = w_optimizer, alpha_optimizer
        self.lr, self.lr_min, self.val_lambda, self.grad_clip = lr, lr_min, val_lambda, grad_clip
        self.adapt_steps, self.adapt_lr_w, self.adapt_lr_alpha = adapt_steps, adapt_lr_w, adapt_lr_alpha

    def local_module(self, model: SearchNetwork, task: ClientTask) -> MiLeNASSearch:
        from federated_nas.algorithms.core.local_steps import MiLeNASSearch  # Lightning, where clients train

        lr = cosine_lr(self.lr, self.lr_min, task.plan.round_idx, task.plan.rounds)
        return MiLeNASSearch(model, self.w_optimizer, self.alpha_optimizer, lr, self.val_lambda, self.grad_clip)

    def client_loader(self, task: ClientTask) -> Iterable:
        return train_val_pairs(task.client, task.plan.batch_size, task.seed)

    def personalization_budget(self) -> str:
        return steps_after_rounds(self.adapt_steps, "MiLeNAS")

    def adapt(self, model: SearchNetwork, task: ClientTask) -> SearchNetwork:
        """The client's own continuation of the search: ``adapt_steps`` steps of the rounds' MiLeNAS module with
        plain SGD (w at ``adapt_lr_w``, alpha at ``adapt_lr_alpha``), outside a fit.

        Runs on a copy of the global supernet, so each client's alpha (its genotype) moves toward
        its own data; the batch pairs cycle when the client has fewer than ``adapt_steps``.
        """
        from federated_nas.algorithms.core.local_steps import MiLeNASSearch  # Lightning, where clients train

        adapted = copy.deepcopy(model).train()
        search = MiLeNASSearch(adapted, torch.optim.SGD, functools.partial(torch.optim.SGD, lr=self.adapt_lr_alpha),
                               self.adapt_lr_w, self.val_lambda, self.grad_clip)
        pairs = (pair for pair, _, _ in train_val_pairs(task.client, task.plan.batch_size, task.seed))
        search.run_steps(itertools.islice(itertools.cycle(pairs), self.adapt_steps))
        return adapted.eval()
