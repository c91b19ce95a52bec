"""The local update rules of the supernet methods: how one client step moves w and alpha.

One home for the rules, as DARTS keeps its step in ``architect.py``: a method module picks a rule
here and says only when and with what settings it runs. ``ArchitectureSearch`` is the skeleton
(two optimizers, w's gradient clipped, alpha frozen during warm-up); ``milenas_backward`` is
FedNAS' mixed-level gradient; ``inner_steps`` and ``first_order_meta_gradient`` are first-order
MAML, which FedMetaNAS, Per-FedAvg and FedRLNAS' meta- variants share; ``RecalibrateBatchNorm`` ends a
client's search with BatchNorm statistics of the evaluation relaxation. FedNAS and FedMetaNAS import
this module where a client's work is built, so their server process need not import Lightning.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import lightning as L
import torch

from federated_nas.algorithms.core.base import OptimizerFactory, classification_loss
from federated_nas.algorithms.core.local_module import LocalModule
from federated_nas.algorithms.core.supernet_methods import recalibrate_batch_norm
from federated_nas.search_space.supernet import SearchNetwork

Backward = Callable[..., None]


class ArchitectureSearch(LocalModule):
    """A client's local search: one optimizer for the weights w, one for the architecture.

    Subclasses fill the gradients between ``zero_grads`` and ``step``; the step clips w's
    gradient (never alpha's) and moves both.
    """

    def __init__(self, model: SearchNetwork, w_optimizer: OptimizerFactory, alpha_optimizer: OptimizerFactory,
                 lr: float, grad_clip: float | None):
        super().__init__(model, w_optimizer, lr, grad_clip)
        self.alpha_optimizer = alpha_optimizer
        self.alpha_frozen = False  # warm-up: only w moves, alpha keeps its (uniform) start

    def configure_optimizers(self):
        return [self.w_optimizer(self.weight_parameters(), lr=self.lr),
                self.alpha_optimizer(self.model.arch_parameters())]

    def zero_grads(self) -> None:
        for optimizer in self.optimizers():
            optimizer.zero_grad()

    def step(self) -> None:
        w_opt, alpha_opt = self.optimizers()
        self.clip_weight_gradients(w_opt)
        w_opt.step()
        if not self.alpha_frozen:
            alpha_opt.step()


# ---------------------------------------------------------- MiLeNAS' mixed-level step (FedNAS, FedDSNAS)

def milenas_backward(model: SearchNetwork, batch: dict, val_lambda: float,
                     backward: Backward = torch.Tensor.backward) -> torch.Tensor:
    """Accumulate one MiLeNAS step's gradients into ``.grad``: grad_w L_tr and grad_a (L_tr + lambda L_val).

    Both losses are taken at the same (w, alpha): nothing steps in between. ``backward`` is
    Lightning's ``manual_backward`` inside a fit, plain autograd outside one (personalization).
    Returns L_tr.
    """
    train_loss = classification_loss(model, batch["train"])
    backward(train_loss)
    if val_lambda:
        val_loss = classification_loss(model, batch["val"])
        backward(val_lambda * val_loss, inputs=model.arch_parameters())
    return train_loss


class MiLeNASSearch(ArchitectureSearch):
    """One client's local search: a w step and an alpha step per (train, val) batch pair."""

    def __init__(self, model: SearchNetwork, w_optimizer: OptimizerFactory, alpha_optimizer: OptimizerFactory,
                 lr: float, val_lambda: float, grad_clip: float | None):
        super().__init__(model, w_optimizer, alpha_optimizer, lr, grad_clip)
        self.val_lambda = val_lambda

    def local_step(self, batch) -> torch.Tensor:
        self.zero_grads()
        train_loss = milenas_backward(self.model, batch, self.val_lambda, self.manual_backward)
        self.step()
        return train_loss


# ---------------------------------------------------- first-order MAML (FedMetaNAS, Per-FedAvg, meta-FedRLNAS)

def inner_steps(model: torch.nn.Module, params: list[torch.nn.Parameter], rates: list[float],
                batches: Iterable, loss_fn: Callable) -> None:
    """Plain SGD on ``params`` in place, one step per batch: MAML's inner loop and personal adaptation.

    ``torch.autograd.grad`` leaves every ``.grad`` untouched, so a caller's accumulated gradient survives.
    """
    for batch in batches:
        grads = torch.autograd.grad(loss_fn(batch), params, allow_unused=True)
        with torch.no_grad():
            for param, grad, rate in zip(params, grads, rates):
                if grad is not None:
                    param.sub_(rate * grad)


def meta_parameters(model: SearchNetwork, lr_w: float, lr_alpha: float) -> tuple[list[torch.nn.Parameter], list[float]]:
    """(w and alpha together, each one's inner learning rate): what MAML adapts jointly (Eq. 9-10)."""
    weights, arch = model.weight_parameters(), model.arch_parameters()
    return weights + arch, [lr_w] * len(weights) + [lr_alpha] * len(arch)


def first_order_meta_gradient(module: LocalModule, params: list[torch.nn.Parameter], rates: list[float],
                              batch: dict, steps: int, temperatures: list[float] | None = None,
                              kept: list[bool] | None = None) -> torch.Tensor:
    """Accumulate into ``params``' grads the first-order MAML meta-gradient of one (support, query) task.

    ``steps`` inner SGD steps adapt a task copy of ``params`` on the support batch; the query
    loss is differentiated at the adapted point; ``params`` then go back to the meta point,
    where the caller's optimizer step applies that gradient (Eq. 9-10). ``temperatures``: the
    relaxation's temperature at each inner step and at the query (a per-task schedule).
    ``kept``: per param, True keeps the adapted value instead (its support steps stay, and the
    query gradient is applied from there). Returns the query loss.
    """
    meta_point = [p.detach().clone() for p in params]
    for step in range(steps):  # the task copy
        if temperatures:
            module.model.relaxation.temperature = temperatures[step]
        inner_steps(module.model, params, rates, [batch["support"]], module.loss)
    if temperatures:
        module.model.relaxation.temperature = temperatures[-1]
    query_loss = module.loss(batch["query"])
    module.manual_backward(query_loss)
    with torch.no_grad():
        for param, start, keep in zip(params, meta_point, kept or [False] * len(params)):
            if not keep:
                param.copy_(start)
    return query_loss


class MetaSearch(ArchitectureSearch):
    """One client's FedMetaNAS local search: first-order MAML over weights and architecture jointly."""

    def __init__(self, model: SearchNetwork, w_optimizer: OptimizerFactory, alpha_optimizer: OptimizerFactory,
                 lr: float, inner_steps: int, inner_lr_w: float, inner_lr_alpha: float, grad_clip: float | None,
                 task_temperatures: list[float] | None = None, w_keeps_support_steps: bool = False):
        super().__init__(model, w_optimizer, alpha_optimizer, lr, grad_clip)
        self.inner_steps, self.inner_lr_w, self.inner_lr_alpha = inner_steps, inner_lr_w, inner_lr_alpha
        self.task_temperatures = task_temperatures
        # True: w is trained by the support batch too (its inner steps stay); alpha stays first-order MAML
        self.w_keeps_support_steps = w_keeps_support_steps

    def local_step(self, batch) -> torch.Tensor:
        params, rates = meta_parameters(self.model, self.inner_lr_w, self.inner_lr_alpha)
        kept = None
        if self.w_keeps_support_steps:
            kept = [True] * len(self.model.weight_parameters()) + [False] * len(self.model.arch_parameters())
        self.zero_grads()
        query_loss = first_order_meta_gradient(self, params, rates, batch, self.inner_steps, self.task_temperatures,
                                               kept)
        self.step()
        return query_loss


def first_order_weight_step(module: LocalModule, task: dict, steps: int, inner_lr: float) -> torch.Tensor:
    """One first-order MAML step of the weights alone, by the module's one optimizer (query loss returned).

    Per-FedAvg's step and the meta- FedRLNAS child step: the architecture is not the client's to
    meta-learn there, so only w adapts on the support batch and only w takes the query gradient.
    """
    optimizer = module.optimizers()
    optimizer.zero_grad()
    params = module.weight_parameters()
    query_loss = first_order_meta_gradient(module, params, [inner_lr] * len(params), task, steps)
    module.clip_weight_gradients(optimizer)
    optimizer.step()
    return query_loss


class RecalibrateBatchNorm(L.Callback):
    """At the end of a client's local search, ``recalibrate_batch_norm`` over the first ``batches``
    training inputs it saw (``inputs`` picks them out of a batch), so the server averages
    statistics that match what it evaluates."""

    def __init__(self, batches: int, inputs: Callable[[Any], torch.Tensor]):
        self.batches, self.inputs = batches, inputs
        self.seen: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: LocalModule, batch: Any, batch_idx: int) -> None:
        if len(self.seen) < self.batches:
            self.seen.append(self.inputs(batch).detach())

    def on_train_end(self, trainer: L.Trainer, module: LocalModule) -> None:
        recalibrate_batch_norm(module.model, self.seen)
        self.seen = []
