"""FedRLNAS (Yao et al., ICDCS 2021): the server learns the architecture distribution by REINFORCE.

The server keeps alpha (softmax per edge over the live ops). Each round every sampled client
trains one child, one op per edge drawn from that distribution, and only the child's weights;
its reward R_k is the child's accuracy on the client's own val split after that training. The
child is drawn on the client from the global alpha with the per-(run, round, client) seed the
loop sets, which is the same as the server drawing it and sending it; the client reports it
back with its reward, in its update's report beside the model state. The server then takes one
REINFORCE ascent step of alpha on the expected reward against a moving-average baseline
(``reinforce.ReinforcePolicy``; its optimizer state is the server's own, outside the model, saved
in every checkpoint, so a resumed run steps exactly alike and clients are never sent it). Each
weight entry is averaged over the clients whose child used it
(``MaskedAverage``); an op no client sampled keeps its value.

The final model is the argmax child (the most likely op on every edge) with its trained weights,
no retraining: the server's supernet relaxes alpha to that child's one-hot weights, so
``global_test_acc`` is the argmax child's accuracy (``final_model: most_likely_child``: ``global_test_acc_discrete``
evaluates that child cut out of the supernet, and ``child_params`` is its size).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import nn

from federated_nas.algorithms.core.aggregation import MaskedAverage, State
from federated_nas.algorithms.core.base import (ClientTask, Evaluate, OptimizerFactory, RoundPlan, cosine_lr,
                                           saved_server_state)
from federated_nas.algorithms.core.local_module import SupervisedTraining
from federated_nas.algorithms.core.local_steps import first_order_weight_step
from federated_nas.algorithms.core.reinforce import POLICY_PREFIX, ReinforcePolicy, new_policy_state
from federated_nas.algorithms.core.schedules import PruningSchedule
from federated_nas.algorithms.core.supernet_methods import SupernetAlgorithm
from federated_nas.data.federated_data import FederatedData
from federated_nas.data.loaders import batch_loader, paired_loader
from federated_nas.errors import ConfigError, DataError
from federated_nas.search_space.children import Child, check_child, child_entry_masks, one_hot_weights, sample_child
from federated_nas.search_space.relaxations import ArgmaxChild, FixedChild
from federated_nas.search_space.supernet import CELL_KINDS, SearchNetwork

LOCAL_STEPS = ("sgd", "maml")
# the server's policy step on the aggregated state: (global model, state, children, rewards)
ServerStep = Callable[[SearchNetwork, State, list[Child], list[float]], None]


class ReinforceAggregator:
    """The FedRLNAS server step: child-masked weight average plus the REINFORCE update of alpha."""

    def __init__(self, server_step: ServerStep, model: SearchNetwork, global_state: State,
                 server_keys: tuple[str, ...] = ("alpha_",)):
        self.server_step, self.model = server_step, model
        self.average = MaskedAverage(global_state)
        # the server's entries (keys starting with ``server_keys``): never averaged, set by its REINFORCE step
        self.server_masks = {key: torch.zeros_like(value, dtype=torch.bool) for key, value in global_state.items()
                             if key.startswith(server_keys)}
        self.children: list[Child] = []
        self.rewards: list[float] = []

    @property
    def count(self) -> int:
        return self.average.count

    def add(self, state: State, weight: float, report: State) -> None:
        """Average ``state`` over the weights its child used; keep the child and reward of its ``report``."""
        self.average.check(state)
        missing = [key for key in (*(f"child_{kind}" for kind in CELL_KINDS), "reward") if key not in report]
        if missing:
            raise DataError(f"client report lacks {', '.join(missing)}")
        child = {kind: report[f"child_{kind}"] for kind in CELL_KINDS}
        try:
            check_child(self.model, child)
        except ValueError as err:
            raise DataError(f"client update: {err}") from None
        reward = float(report["reward"])
        if not 0.0 <= reward <= 1.0:
            raise DataError(f"client reward must be an accuracy in [0, 1], got {reward}")
        self.average.add(state, weight, {**child_entry_masks(self.model, child), **self.server_masks})
        self.children.append(child)
        self.rewards.append(reward)

    def result(self) -> State:
        state = self.average.result()
        self.server_step(self.model, state, self.children, self.rewards)
        return state


class HeldOutLoader:
    """The client's train batches for the local steps, carrying its val split for the reward after them."""

    def __init__(self, train: Iterable, held_out: Iterable):
        self.train, self.held_out = train, held_out

    def __iter__(self):
        if isinstance(self.train, CombinedLoader):  # (support, query) tasks: outside a fit's own
            return (batch for batch, _, _ in self.train)  # unpacking it yields (batch, index, loader index)
        return iter(self.train)

    def __len__(self) -> int:
        if isinstance(self.train, CombinedLoader):  # max_size_cycle: as long as its longest loader
            return max(len(loader) for loader in self.train.flattened)
        return len(self.train)


class ChildTraining(SupervisedTraining):
    """A client trains its fixed child's weights, then measures the child's val accuracy: the reward.

    ``maml`` (inner steps, inner lr) trains them by FedMetaNAS' first-order MAML step on
    (support, query) tasks instead of plain SGD: the meta- variants. Only the weights are
    meta-learned; the architecture is the policy's, which has no gradient here.
    """

    def __init__(self, model: SearchNetwork, w_optimizer: OptimizerFactory, lr: float, grad_clip: float | None,
                 reward_batches: int | None, maml: tuple[int, float] | None = None, child: Child | None = None):
        super().__init__(model, w_optimizer, lr, grad_clip)
        self.reward_batches, self.maml = reward_batches, maml
        self.child: Child = {}
        if child is not None:  # None: a subclass draws it when the fit starts
            self.train_only(child)

    def train_only(self, child: Child) -> None:
        """Make the supernet compute ``child`` alone (one-hot op weights), and keep it for the report."""
        self.child = child
        self.model.relaxation = FixedChild(one_hot_weights(self.model, child))

    def local_step(self, batch) -> torch.Tensor:
        if self.maml is None:
            return super().local_step(batch)
        return first_order_weight_step(self, batch, *self.maml)

    def on_train_end(self) -> None:
        loader = self.trainer.train_dataloader
        reward = child_accuracy(self.model, loader.held_out, self.reward_batches, self.device)
        self.report.update({f"child_{kind}": self.child[kind] for kind in CELL_KINDS}, reward=reward)
        self.after_reward(reward)
        super().on_train_end()

    def after_reward(self, reward: float) -> None:
        """What the client does with its reward besides reporting it (PerFedRLNAS: its own policy's step)."""


@torch.no_grad()
def child_accuracy(model: nn.Module, batches: Iterable, limit: int | None, device: torch.device) -> float:
    """Accuracy of the model (in eval mode) on the first ``limit`` batches (all when None)."""
    was_training = model.training
    model.eval()
    correct = seen = 0
    try:
        for index, (x, y) in enumerate(batches):
            if limit is not None and index >= limit:
                break
            y = y.to(device)
            correct += int((model(x.to(device)).argmax(1) == y).sum())
            seen += len(y)
    finally:
        model.train(was_training)
    return correct / max(seen, 1)


class FedRLNAS(SupernetAlgorithm):
    """Server-side FedRLNAS: argmax-child global model, per-client sampled children, REINFORCE on alpha.

    ``local_step: maml`` and ``pruning`` add FedMetaNAS' MAML child training and the server's
    soft pruning (on the alpha the children are drawn from): the FedMetaNAS paper's meta- variants.
    """


    def __init__(self, search_space: Callable[..., SearchNetwork], w_optimizer: OptimizerFactory,
                 lr: float = 0.025, lr_min: float = 0.001, grad_clip: float | None = 5.0,
                 alpha_lr: float = 3e-3, alpha_update: str = "adam", alpha_betas: Iterable[float] = (0.5, 0.999),
                 alpha_eps: float = 1e-8, baseline_decay: float = 0.99, reward_batches: int | None = None,
                 local_step: str = "sgd", inner_steps: int = 1, inner_lr: float = 0.025, task_size: int | None = None,
                 pruning: PruningSchedule | Mapping | None = None, final_model: str = "most_likely_child"):
        super().__init__(search_space, pruning=pruning, final_model=final_model)
        if local_step not in LOCAL_STEPS:
            raise ConfigError(f"algorithm.local_step must be one of {', '.join(LOCAL_STEPS)}, got {local_step!r}")
        if inner_steps < 0:
            raise ConfigError(f"algorithm.inner_steps must be >= 0, got {inner_steps}")
        self.maml = (inner_steps, inner_lr) if local_step == "maml" else None
        self.task_size = task_size
        if reward_batches is not None and reward_batches < 1:
            raise ConfigError(f"algorithm.reward_batches must be >= 1 or null, got {reward_batches}")
        self.policy = ReinforcePolicy(alpha_lr, alpha_update, alpha_betas, alpha_eps, baseline_decay)
        self.w_optimizer, self.lr, self.lr_min, self.grad_clip = w_optimizer, lr, lr_min, grad_clip
        self.reward_batches = reward_batches
        # the server's policy: its optimizer state (``build_model`` sizes it) and the last round's mean reward
        self.server_policy: State = {}
        self.last_reward = 0.0

    def supernet_options(self) -> dict[str, Any]:
        return {"relaxation": ArgmaxChild()}

    def build_model(self, data: FederatedData) -> SearchNetwork:
        model = super().build_model(data)
        if not isinstance(model, SearchNetwork):
            raise ConfigError("algorithm=fedrlnas samples children of the DARTS cell supernet: use search_space=darts")
        if model.combinations is not None:
            raise ConfigError("algorithm=fedrlnas samples ops only: search_space.input_combinations must be null")
        self.server_policy = new_policy_state(*model.alpha_normal.shape, device=model.alpha_normal.device)
        return model

    def local_module(self, model: SearchNetwork, task: ClientTask) -> ChildTraining:
        """Draw this client's child from the global alpha, with a generator of the task's seed, and train it alone."""
        return ChildTraining(model, child=sample_child(model, torch.Generator().manual_seed(task.seed)),
                             **self.child_training(task.plan))

    def child_training(self, plan: RoundPlan) -> dict[str, Any]:
        """How a client trains its child this round (``ChildTraining``'s settings)."""
        return {"w_optimizer": self.w_optimizer, "lr": cosine_lr(self.lr, self.lr_min, plan.round_idx, plan.rounds),
                "grad_clip": self.grad_clip, "reward_batches": self.reward_batches, "maml": self.maml}

    def client_loader(self, task: ClientTask) -> HeldOutLoader:
        """Train batches (MAML: (support, query) tasks of train and val) and the val batches of the reward."""
        client, batch_size, seed = task.client, task.plan.batch_size, task.seed
        if self.maml is None:
            train = batch_loader(client.train, batch_size, shuffle=True, seed=seed)
        else:
            train = paired_loader(client.train, client.val, ("support", "query"), self.task_size or batch_size, seed)
        return HeldOutLoader(train, batch_loader(client.val, batch_size, shuffle=True, seed=seed + 1))

    def aggregator(self, model: SearchNetwork, global_state: State) -> ReinforceAggregator:
        return ReinforceAggregator(self.reinforce_step, model, global_state)

    def reinforce_step(self, model: SearchNetwork, state: State, children: list[Child], rewards: list[float]) -> None:
        """The server's step: ``state``'s alpha up the REINFORCE estimate, its baseline toward the mean reward.

        ``model`` holds the alpha the children were drawn from (this round's global model).
        """
        probabilities = {kind: model.op_distribution(kind) for kind in CELL_KINDS}
        self.policy.step({**state, **self.server_policy}, probabilities, children, rewards)  # both in place
        self.last_reward = sum(rewards) / len(rewards)

    def after_aggregation(self, model: SearchNetwork, round_idx: int, rounds: int,
                          evaluate: Evaluate | None = None) -> dict[str, Any]:
        return {"reward_mean": self.last_reward, "reward_baseline": float(self.server_policy["reinforce.baseline"]),
                **super().after_aggregation(model, round_idx, rounds, evaluate)}

    def server_state(self, model: SearchNetwork) -> dict[str, Any]:
        """The policy's optimizer state and the last mean reward, beside what every supernet method keeps."""
        return {**super().server_state(model), **{k: v.clone() for k, v in self.server_policy.items()},
                "reinforce.reward": self.last_reward}

    def load_server_state(self, model: SearchNetwork, state: dict[str, Any]) -> None:
        super().load_server_state(model, state)
        for name, value in self.server_policy.items():
            if name in state:
                value.copy_(torch.as_tensor(state[name]))
        self.last_reward = float(state.get("reinforce.reward", 0.0))

    def restore(self, model: SearchNetwork, checkpoint: dict[str, Any]) -> None:
        """Checkpoints written before the policy left the model kept its state as ``reinforce.*`` buffers of the
        model (and, earlier still, the last client's child as ``reinforce.child_*``): moved to the server state."""
        model_state = dict(checkpoint["model"])
        legacy = {key: model_state.pop(key) for key in list(model_state) if key.startswith(POLICY_PREFIX)}
        super().restore(model, {**checkpoint, "model": model_state,
                                "algorithm_state": {**legacy, **saved_server_state(checkpoint)}})
