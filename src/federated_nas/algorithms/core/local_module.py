"""A client's local work as a LightningModule: the base every method's local step subclasses.

Why a module of its own: Lightning's import costs seconds (it brings torchmetrics, torchvision's
models, torch._dynamo and scipy). The loop, the backends' server side and the strategies of FedNAS
and FedMetaNAS (the default commands) import none of it, so their server process (``cluster=auto``,
SLURM, torchrun) starts its first round without it; their LightningModules (``local_steps``) are
imported where a client's local work is first built. The other methods define their
LightningModules beside their strategies, so their servers import Lightning with the method.
"""

from __future__ import annotations

import time
from typing import Iterable

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn
from torchmetrics import MeanMetric

from federated_nas.algorithms.core.aggregation import State
from federated_nas.algorithms.core.base import OptimizerFactory, classification_loss
from federated_nas.compat import use_torch_leaf_factory_in_lightning

use_torch_leaf_factory_in_lightning()  # before any client fit


class LocalModule(L.LightningModule):
    """A client's local work on its copy of the global model, with manual optimization.

    Subclasses implement ``local_step``; this class owns the loss, the optimizer factory calls
    and the logging every method needs. Optimizer state starts fresh for each client fit, as
    in FedNAS: momentum does not travel between clients or rounds.
    """

    def __init__(self, model: nn.Module, w_optimizer: OptimizerFactory, lr: float, grad_clip: float | None):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.w_optimizer = w_optimizer
        self.lr = lr
        self.grad_clip = grad_clip
        self.compute_seconds = 0.0
        # state this client keeps across rounds (a personal model, a head), as it stands after the fit:
        # a method that keeps one fills it (from its task's ``personal``); the server checkpoints it per client
        self.personal: State = {}
        # what the client tells the server besides its model (FedRLNAS: its child and reward); the
        # backend adds the fit's train_loss and sends it next to the state, never averaged into it
        self.report: dict[str, torch.Tensor | float] = {}
        # extra per-fit behaviour a method attaches to a module it did not define (e.g. keeping a personal part)
        self.callbacks: list[L.Callback] = []
        # the fit's mean loss over its steps. A metric object, not a tensor: Lightning neither guesses a batch
        # size from the method's batch (a dict of splits) nor advises sync_dist, and no sync: a client's loss
        # is its own, while a worker's process group spans the whole federation
        self.train_loss = MeanMetric(sync_on_compute=False)
        self._outside_fit: list[torch.optim.Optimizer] | None = None  # run_steps' optimizers, while it runs

    def configure_callbacks(self) -> list[L.Callback]:
        return list(self.callbacks)

    def on_train_start(self) -> None:
        self._train_started = time.perf_counter()

    def on_train_end(self) -> None:
        # the local work alone, without Trainer set-up: what round overhead is measured against
        self.compute_seconds = time.perf_counter() - self._train_started

    def weight_parameters(self) -> list[nn.Parameter]:
        getter = getattr(self.model, "weight_parameters", None)
        return getter() if getter else list(self.model.parameters())

    def configure_optimizers(self):
        return self.w_optimizer(self.weight_parameters(), lr=self.lr)

    def loss(self, batch) -> torch.Tensor:
        return classification_loss(self.model, batch)

    def clip_weight_gradients(self, optimizer) -> None:
        if self.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    def training_step(self, batch, batch_idx):
        loss = self.local_step(batch)
        self.train_loss.update(loss.detach())
        self.log("train_loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=False, logger=False)
        return loss

    def local_step(self, batch) -> torch.Tensor:
        raise NotImplementedError

    # --- the same steps outside a fit: a method's personalization after the rounds, where no Trainer runs

    def run_steps(self, batches: Iterable) -> None:
        """``local_step`` on each of ``batches`` (moved to the model's device) with plain autograd and fresh
        optimizers from ``configure_optimizers``, no Trainer: so a personalization that continues a method's
        local search (FedNAS) runs the very step of its rounds, on whatever device the model is."""
        device = next(self.model.parameters()).device
        optimizers = self.configure_optimizers()
        self._outside_fit = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
        try:
            with torch.enable_grad():  # personalization may be called from evaluation code under no_grad
                for batch in batches:
                    self.local_step(move_data_to_device(batch, device))
        finally:
            self._outside_fit = None

    def optimizers(self, use_pl_optimizer: bool = True):
        if self._outside_fit is None:
            return super().optimizers(use_pl_optimizer)
        return self._outside_fit if len(self._outside_fit) > 1 else self._outside_fit[0]

    def manual_backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        if self._outside_fit is None:
            return super().manual_backward(loss, *args, **kwargs)
        loss.backward(*args, **kwargs)

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if self._outside_fit is None:
            return super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(f"outside a fit, gradients are clipped by norm only, not {gradient_clip_algorithm!r}")
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)


class SupervisedTraining(LocalModule):
    """Plain local SGD on the client's train split."""

    def local_step(self, batch) -> torch.Tensor:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss = self.loss(batch)
        self.manual_backward(loss)
        self.clip_weight_gradients(optimizer)
        optimizer.step()
        return loss
