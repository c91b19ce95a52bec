"""FedBABU (Oh et al., 2022): federated training of the body alone, the head fine-tuned per client afterwards.

The head (the final classifier layer, ``models.heads``) keeps its random initialisation through
the whole federated run, so every client learns features for the same fixed classifier and
client drift in the head cannot hurt the shared representation. Personalization then fine-tunes
the whole model on each client's own data.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from federated_nas.algorithms.baselines.fedavg import FedAvg
from federated_nas.algorithms.core.base import ClientTask, OptimizerFactory, steps_after_rounds
from federated_nas.algorithms.core.personal import PartialTraining, finetune
from federated_nas.data.federated_data import FederatedData
from federated_nas.errors import ConfigError
from federated_nas.models.heads import body_parameters, with_head


class FedBABU(FedAvg):
    """FedAvg on the body with the head frozen; fine-tuning as personalization."""


    def __init__(self, model: Callable[..., nn.Module] | None, optimizer: OptimizerFactory, lr: float = 0.025,
                 lr_min: float = 0.001, grad_clip: float | None = 5.0, finetune_steps: int = 10,
                 finetune_lr: float | None = None):
        if not (isinstance(finetune_steps, int) and finetune_steps >= 0):
            raise ConfigError(f"algorithm.finetune_steps must be an integer >= 0, got {finetune_steps}")
        if finetune_lr is not None and not finetune_lr > 0:
            raise ConfigError(f"algorithm.finetune_lr must be positive or null (algorithm.lr), got {finetune_lr}")
        super().__init__(model, optimizer, lr, lr_min, grad_clip)
        self.finetune_steps = finetune_steps
        self.finetune_lr = self.lr if finetune_lr is None else float(finetune_lr)

    def build_model(self, data: FederatedData) -> nn.Module:
        return with_head(super().build_model(data))

    def local_module(self, model: nn.Module, task: ClientTask) -> PartialTraining:
        return PartialTraining(model, self.optimizer, self.local_lr(task.plan), self.grad_clip,
                               phases=[(body_parameters, None)])

    def personalization_budget(self) -> str:
        return steps_after_rounds(self.finetune_steps, "SGD")

    def adapt(self, model: nn.Module, task: ClientTask) -> nn.Module:
        """The whole model fine-tuned on the client's train split (the paper's choice over head-only)."""
        return finetune(model, task, self.finetune_steps, self.finetune_lr)
