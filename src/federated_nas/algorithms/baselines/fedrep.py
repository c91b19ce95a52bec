"""FedRep (Collins et al., 2021): a shared representation (the body) and a personal head per client.

Each client first fits its own head to the current body (body frozen), then trains the body
with its head fixed; only the body is meaningfully averaged. The head is the network's final
classifier layer (``models.heads``). The client keeps its head across rounds and sends back the
head it received, so the aggregate's head is never an average of unrelated personal heads.
"""

from __future__ import annotations

import copy
from typing import Callable

from torch import nn

from federated_nas.algorithms.baselines.fedavg import FedAvg
from federated_nas.algorithms.core.base import ClientTask, OptimizerFactory, State, steps_after_rounds
from federated_nas.algorithms.core.personal import KeepPersonalPart, PartialTraining, finetune, load_parameter_values
from federated_nas.data.federated_data import FederatedData
from federated_nas.errors import ConfigError
from federated_nas.models.heads import body_parameters, head_parameter_names, head_parameters, with_head


class FedRepTraining(PartialTraining):
    """The first ``head_steps`` local steps train the client's head, the rest the body.

    Counted in steps rather than epochs so it works with capped local epochs (``local_batches``).
    """

    def __init__(self, model: nn.Module, w_optimizer: OptimizerFactory, lr: float, grad_clip: float | None,
                 head_steps: int, personal: State | None = None):
        super().__init__(model, w_optimizer, lr, grad_clip, phases=[(head_parameters, head_steps),
                                                                    (body_parameters, None)])
        # the client's own head in (``personal``, none on its first round); the upload carries the head it was sent
        self.callbacks.append(KeepPersonalPart(head_parameter_names(model), kept=personal))


class FedRep(FedAvg):
    """FedAvg's server over the body; clients with personal heads."""


    def __init__(self, model: Callable[..., nn.Module] | None, optimizer: OptimizerFactory, lr: float = 0.025,
                 lr_min: float = 0.001, grad_clip: float | None = 5.0, head_steps: int = 10):
        if not (isinstance(head_steps, int) and head_steps >= 0):
            raise ConfigError(f"algorithm.head_steps must be an integer >= 0, got {head_steps}")
        super().__init__(model, optimizer, lr, lr_min, grad_clip)
        self.head_steps = head_steps

    def build_model(self, data: FederatedData) -> nn.Module:
        return with_head(super().build_model(data))

    def local_module(self, model: nn.Module, task: ClientTask) -> FedRepTraining:
        return FedRepTraining(model, self.optimizer, self.local_lr(task.plan), self.grad_clip, self.head_steps,
                              task.personal)

    def personalization_budget(self) -> str:
        return (f"personal head: {self.head_steps} steps in each round a client takes part in "
                f"(a client never sampled: {steps_after_rounds(self.head_steps, 'SGD')})")

    def adapt(self, model: nn.Module, task: ClientTask) -> nn.Module:
        """The global body with the client's own head.

        A client that never trained has no head of its own; as FedRep does for new clients, it
        fits one to the global body (``head_steps`` steps at ``lr``) rather than use the untrained
        head the aggregate carries.
        """
        if not task.personal:
            return finetune(model, task, self.head_steps, self.lr, head_parameters)
        adapted = copy.deepcopy(model)
        load_parameter_values(adapted, task.personal)
        return adapted.eval()
