"""Building blocks of personalized federated learning, shared by the methods that need them.

``finetune``: a client's copy of a model after a few plain SGD steps on its own data (FedBABU's
adaptation, FedAvg's local adaptation, Per-FedAvg, personalized NAS). ``PartialTraining``: local
SGD that trains only part of the network at a time (FedRep's head-then-body, FedBABU's frozen
head). ``parameter_values``/``load_parameter_values``: move named weights in and out of a model;
``KeepPersonalPart`` uses them to keep a client's personal part between rounds (FedRep's head,
FedPNAS' personal cells). This module depends on ``base`` alone, so any method module (FedAvg's
included) can import it.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Iterator, Sequence

import lightning as L
import torch
from torch import nn

from federated_nas.algorithms.core.base import ClientTask, OptimizerFactory, classification_loss
from federated_nas.algorithms.core.local_module import LocalModule
from federated_nas.data.loaders import batch_loader

ParameterSelector = Callable[[nn.Module], list[nn.Parameter]]


def cycled(loader: Iterable, steps: int) -> Iterator:
    """``steps`` batches of ``loader``, starting it again when it runs out; nothing from an empty loader."""
    given = 0
    while given < steps:
        before_epoch = given
        for batch in loader:
            if given == steps:
                return
            yield batch
            given += 1
        if given == before_epoch:
            return


def finetune(model: nn.Module, task: ClientTask, steps: int, lr: float,
             parameters: ParameterSelector | None = None) -> nn.Module:
    """A copy of ``model`` after ``steps`` plain SGD steps on the task's client's train split, in eval mode.

    Only ``parameters(copy)`` move (all parameters when None); ``model`` itself is untouched, so
    the server's global model can be adapted for every client in turn. The batch order depends
    only on the task's seed.
    """
    adapted = copy.deepcopy(model).train()
    params = parameters(adapted) if parameters is not None else list(adapted.parameters())
    device = params[0].device if params else torch.device("cpu")
    with torch.enable_grad():  # personalization may be called from evaluation code under no_grad
        for x, y in cycled(batch_loader(task.client.train, task.plan.batch_size, shuffle=True, seed=task.seed), steps):
            loss = classification_loss(adapted, (x.to(device), y.to(device)))
            found = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for param, grad in zip(params, found):
                    if grad is not None:
                        param.sub_(lr * grad)
    return adapted.eval()


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_buffers()), **dict(model.named_parameters())}


def parameter_values(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Detached copies of the named parameters (or buffers): a snapshot later steps cannot change."""
    tensors = _named_tensors(model)
    return {name: tensors[name].detach().clone() for name in names}


@torch.no_grad()
def load_parameter_values(model: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Copy ``values`` into the named parameters or buffers in place (optimizers keep pointing at them)."""
    tensors = _named_tensors(model)
    for name, value in values.items():
        tensors[name].copy_(value)


class KeepPersonalPart(L.Callback):
    """The named part of a local module's model stays with its client across rounds.

    At the start of training the client's ``kept`` values (none on its first fit, which then starts
    from what it received) replace the received ones. When the fit ends, after
    every ``on_train_end`` (so a module's own end-of-training work still sees its part), the trained
    values are kept in ``module.personal`` and the received ones put back: the upload carries the
    part as it was sent, and averaging never mixes unrelated clients' personal parts. Names in
    ``uploaded`` are kept too but go up as trained, for the server to average (PerFedRLNAS' policies).
    ``outside_model``: tensors that are no part of the model but stay with the client too (PerFedRLNAS'
    policy optimizer state), kept with the values they have when the fit ends.
    """

    def __init__(self, names: Iterable[str], kept: dict[str, torch.Tensor] | None = None, uploaded: Iterable[str] = (),
                 outside_model: dict[str, torch.Tensor] | None = None):
        self.names, self.kept, self.uploaded = list(names), dict(kept or {}), set(uploaded)
        self.outside_model = outside_model or {}
        self.received: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: L.Trainer, module: LocalModule) -> None:
        self.received = parameter_values(module.model, [name for name in self.names if name not in self.uploaded])
        if self.kept:
            load_parameter_values(module.model, self.kept)

    def on_fit_end(self, trainer: L.Trainer, module: LocalModule) -> None:
        module.personal = {**parameter_values(module.model, self.names),
                           **{name: value.detach().clone() for name, value in self.outside_model.items()}}
        load_parameter_values(module.model, self.received)


class PartialTraining(LocalModule):
    """Local SGD that trains one part of the network at a time; every other weight keeps its value.

    ``phases`` is a list of (part, steps): the first part trains for its steps, then the next, and
    the last part for all remaining steps (its steps are ignored). Each part has an optimizer over
    its own parameters alone, so neither weight decay nor momentum ever moves a frozen weight.
    """

    def __init__(self, model: nn.Module, w_optimizer: OptimizerFactory, lr: float, grad_clip: float | None,
                 phases: Sequence[tuple[ParameterSelector, int | None]]):
        super().__init__(model, w_optimizer, lr, grad_clip)
        self.phases = list(phases)
        self.steps_done = 0

    def configure_optimizers(self):
        return [self.w_optimizer(part(self.model), lr=self.lr) for part, _ in self.phases]

    def phase(self) -> int:
        """Which part the next local step trains."""
        boundary = 0
        for index, (_, steps) in enumerate(self.phases[:-1]):
            boundary += steps
            if self.steps_done < boundary:
                return index
        return len(self.phases) - 1

    def local_step(self, batch) -> torch.Tensor:
        optimizers = self.optimizers()
        optimizer = optimizers[self.phase()] if isinstance(optimizers, list) else optimizers
        self.model.zero_grad(set_to_none=True)  # no frozen part's gradient is carried into a later phase
        loss = self.loss(batch)
        self.manual_backward(loss)
        self.clip_weight_gradients(optimizer)
        optimizer.step()
        self.steps_done += 1
        return loss
