"""FedAvg (McMahan et al.) on a fixed network: the FedNAS train stage and the fixed-architecture baseline."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from federated_nas.algorithms.core.base import (ClientTask, FederatedAlgorithm, OptimizerFactory, RoundPlan, cosine_lr,
                                          steps_after_rounds)
from federated_nas.algorithms.core.local_module import SupervisedTraining
from federated_nas.algorithms.core.personal import finetune
from federated_nas.data.federated_data import FederatedData
from federated_nas.errors import ConfigError
from federated_nas.search_space.network import count_parameters


class FedAvg(FederatedAlgorithm):
    """Clients train all weights locally; the server averages them by sample count.

    With ``personalize=true`` each client fine-tunes the final global model on its own train
    split (FedAvg + local adaptation): ``adapt_steps`` plain SGD steps at ``adapt_lr``.
    """


    def __init__(self, model: Callable[..., nn.Module] | None, optimizer: OptimizerFactory, lr: float = 0.025,
                 lr_min: float = 0.001, grad_clip: float | None = 5.0, adapt_steps: int = 5,
                 adapt_lr: float = 0.025):
        if model is None:  # search.yaml's default: search methods build their own supernet
            raise ConfigError(f"algorithm={self.name} needs a fixed network: "
                              "model=cnn|resnet18|mobilenet_v3|densenet|genotype")
        if adapt_steps < 0:
            raise ConfigError(f"algorithm.adapt_steps must be >= 0, got {adapt_steps}")
        self.model_factory, self.optimizer = model, optimizer
        self.lr, self.lr_min, self.grad_clip = lr, lr_min, grad_clip
        self.adapt_steps, self.adapt_lr = adapt_steps, adapt_lr

    def build_model(self, data: FederatedData) -> nn.Module:
        return self.model_factory(in_channels=data.in_channels, num_classes=data.num_classes)

    def local_lr(self, plan: RoundPlan) -> float:
        return cosine_lr(self.lr, self.lr_min, plan.round_idx, plan.rounds)

    def local_module(self, model: nn.Module, task: ClientTask) -> SupervisedTraining:
        return SupervisedTraining(model, self.optimizer, self.local_lr(task.plan), self.grad_clip)

    def round_report(self, model: nn.Module) -> dict[str, Any]:
        return {"params": count_parameters(model)}

    def personalization_budget(self) -> str:
        return steps_after_rounds(self.adapt_steps, "SGD")

    def adapt(self, model: nn.Module, task: ClientTask) -> nn.Module:
        return finetune(model, task, self.adapt_steps, self.adapt_lr)
