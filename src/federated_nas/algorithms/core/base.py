"""What every federated method shares: the contract with the federated loop.

A method is a small strategy object (``FederatedAlgorithm``): it builds the global model, wraps
a client's copy of it in a LightningModule for the local work (``local_module``: the skeleton),
and reports what a round produced. The loop, aggregation, checkpoints and tracking are the same
for all methods. Nothing here imports Lightning (see ``local_module``), so a method module that
imports its LightningModule where a client's work is built (FedNAS, FedMetaNAS) leaves a server
whose clients run elsewhere without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from federated_nas.algorithms.core.aggregation import State, WeightedAverage, load_state
from federated_nas.data.federated_data import ClientData, FederatedData
from federated_nas.data.loaders import batch_loader

Evaluate = Callable[[nn.Module], float]  # a model -> its global test accuracy

if TYPE_CHECKING:  # Lightning is imported only where clients train (see local_module)
    from federated_nas.algorithms.core.local_module import LocalModule

OptimizerFactory = Callable[..., torch.optim.Optimizer]


@dataclass(frozen=True)
class RoundPlan:
    """What every client of one round is asked to do; ``dataclasses.asdict`` of it is a worker's command."""

    round_idx: int
    rounds: int
    seed: int  # the run's: each client's own seed is derived from it with the round and its id
    local_epochs: int
    local_batches: int | None
    batch_size: int
    deadline: float | None = None  # seconds after which a client not yet started is reported late
    # numbers of the method's server state every client of the round gets with the plan, not in the model
    # (``FederatedAlgorithm.round_values``: PerFedRLNAS' federation baseline)
    server_values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientTask:
    """One client's share of a round: its data, the plan, its own seed and what it kept from earlier rounds.

    ``seed`` is a function of (run seed, round, client) alone, so a client's work is the same on any
    backend and whatever ran before it; ``personal`` is empty on the client's first round.
    """

    client: ClientData
    plan: RoundPlan
    seed: int
    personal: State = field(default_factory=dict)


def personalization_task(client: ClientData, batch_size: int, run_seed: int, after_round: int, seed: int,
                         personal: State | None = None) -> ClientTask:
    """A client's task for ``FederatedAlgorithm.adapt`` once ``after_round`` rounds are done: the same contract as
    a round's, its plan the round after the last (one epoch of ``batch_size`` batches), ``seed`` its own."""
    plan = RoundPlan(after_round, after_round, run_seed, local_epochs=1, local_batches=None, batch_size=batch_size)
    return ClientTask(client, plan, seed, dict(personal or {}))


def steps_after_rounds(count: int, kind: str) -> str:
    """A personalization budget of ``count`` steps on the client's own data once the rounds are over."""
    return f"{count} {kind} step{'' if count == 1 else 's'} after the rounds"


def classification_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def cosine_lr(base: float, minimum: float, round_idx: int, rounds: int) -> float:
    """Cosine annealing across rounds, so the schedule is a function of the round alone (resume-safe)."""
    progress = round_idx / max(rounds, 1)
    return minimum + 0.5 * (base - minimum) * (1.0 + math.cos(math.pi * progress))


def saved_server_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What the algorithm's server kept beside the model (``FederatedAlgorithm.server_state``); checkpoints
    written before that hook kept a relaxation's temperature under its own key."""
    if "algorithm_state" in checkpoint:
        return dict(checkpoint["algorithm_state"])
    legacy = checkpoint.get("temperature")
    return {} if legacy is None else {"temperature": legacy}


class FederatedAlgorithm:
    """The contract between a method and the federated loop."""

    # the round metric that sizes the model this method delivers, logged again as final_model_params
    final_params_metric: str = "params"

    @property
    def name(self) -> str:
        """The method's name in run dirs, tags and logs: its YAML's ``name`` where built from a config
        (``builders.build`` sets it: fedmetanas_paper, meta_fedpnas), else its class's name in lower case."""
        return self.__dict__.get("_name") or type(self).__name__.lower()

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    def build_model(self, data: FederatedData) -> nn.Module:
        raise NotImplementedError

    def client_module(self, model: nn.Module, task: ClientTask) -> LocalModule:
        """What a client runs (the backends call this): the model prepared for the round, then the method's
        local module. A method overrides the two hooks below, never this, so none forgets the first."""
        self.prepare_client_model(model, task.plan)
        return self.local_module(model, task)

    def prepare_client_model(self, model: nn.Module, plan: RoundPlan) -> None:
        """Set what the round changes on the client's copy of the global model (a schedule's value)."""

    def local_module(self, model: nn.Module, task: ClientTask) -> LocalModule:
        """The LightningModule that does ``task`` on ``model``, the client's copy of the global model."""
        raise NotImplementedError

    def client_loader(self, task: ClientTask) -> Any:
        """One local epoch of the client's training data."""
        return batch_loader(task.client.train, task.plan.batch_size, shuffle=True, seed=task.seed)

    def round_report(self, model: nn.Module) -> dict[str, Any]:
        """Per-round facts about the global model beyond accuracy (genotype, diagnostics)."""
        return {}

    def aggregator(self, model: nn.Module, global_state: dict[str, torch.Tensor]) -> WeightedAverage:
        """What combines this round's client updates into the next global state, streaming.

        Default: the sample-weighted mean of every entry. A method whose server does more than
        average (FedRLNAS' REINFORCE step) returns an object with the same ``add(state, weight,
        report)``, ``count`` and ``result``; ``report`` is what the client's local module put in its
        ``report``. ``model`` is the global model, for its structure.
        """
        return WeightedAverage(global_state)

    def after_aggregation(self, model: nn.Module, round_idx: int, rounds: int,
                          evaluate: Evaluate | None = None) -> dict[str, Any]:
        """Server-side work on the new global model (schedules, pruning); returns facts to log. ``evaluate``
        scores a model on the global test set, for facts that need it (the accuracy a change cost)."""
        return {}

    def server_state(self, model: nn.Module) -> dict[str, Any]:
        """What the method's server keeps outside the model's tensors (a schedule's current value): saved with
        every checkpoint, so a resumed run or a validation of a finished one sees the same model."""
        return {}

    def load_server_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Restore what ``server_state`` saved (an empty dict: nothing was)."""

    def restore(self, model: nn.Module, checkpoint: dict[str, Any]) -> None:
        """The global model and this server's state as a checkpoint left them (a resume, a finished run's
        validation). A method whose checkpoints changed shape moves older entries over here."""
        load_state(model, checkpoint["model"])
        self.load_server_state(model, saved_server_state(checkpoint))

    def round_values(self) -> dict[str, float]:
        """Numbers of the server's state that every client of the next round needs (``RoundPlan.server_values``):
        they travel with the plan, so the model carries only what clients train."""
        return {}

    def discrete_model(self, model: nn.Module) -> nn.Module | None:
        """The model made discrete with its trained weights, when the method has one (NAS)."""
        return None

    def adapt(self, model: nn.Module, task: ClientTask) -> nn.Module | None:
        """A client's personalized copy of the global model, when the method defines personalization.

        ``task`` is the client's share of the personalization after the last round (``personalization_task``):
        its data, batch size and seed, and what its local modules kept across rounds (``personal``, empty if
        nothing).
        """
        return None

    def personalization_budget(self) -> str | None:
        """What ``adapt`` costs a client, in words for the comparison tables (None: no personalization).

        Methods personalize with different budgets (steps after the federation, or personal parts
        trained in every round a client takes part); tables show it so unequal budgets are visible.
        """
        return None
