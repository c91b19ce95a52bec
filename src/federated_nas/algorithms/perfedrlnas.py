"""PerFedRLNAS (Yao and Li, AAAI 2024): one shared supernet, one architecture policy per client.

FedRLNAS with a policy per client: client k draws its child from its own alpha_k, trains that
child's weights alone, and takes the REINFORCE step of alpha_k with its own reward R_k (the
child's val accuracy after training) against its own moving-average baseline b_k,

    alpha_k <- alpha_k + lr_alpha * Adam((R_k - b_k) * (one_hot(a_k) - softmax(alpha_k))),

the same step as FedRLNAS' server takes with one client. The step needs nothing but client k's
child and reward, so it runs where they are; alpha_k, its Adam moments, b_k and its step count
are the client's personal state, which the server keeps and checkpoints per client. The first
step of a client starts its baseline from the federation's (the server's moving average of the
round mean reward), or from its own reward when the federation has none yet.

The server averages each supernet weight over the clients whose child used it (FedRLNAS'
``MaskedAverage``) and the uploaded policies, sample-weighted, into the global alpha: the
federation's consensus, which a client's first policy starts from and whose argmax child is the
global model. A client's final model (``personalize=true``) is the argmax child of its own
policy on the shared weights, no retraining; a client that never took part gets the global one.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from federated_nas.algorithms.aggregation import State
from federated_nas.algorithms.base import ClientTask
from federated_nas.algorithms.fedrlnas import ChildTraining, FedRLNAS, ReinforceAggregator
from federated_nas.algorithms.personal import KeepPersonalPart, load_parameter_values
from federated_nas.algorithms.reinforce import ReinforcePolicy
from federated_nas.data.federated_data import ClientData
from federated_nas.search_space.children import Child, sample_child
from federated_nas.search_space.supernet import CELL_KINDS, SearchNetwork

ARCH_NAMES = tuple(f"alpha_{kind}" for kind in CELL_KINDS)


class PersonalChildTraining(ChildTraining):
    """A client's round: its own policy in, a child drawn from it and trained, the policy's step, the policy out.

    ``KeepPersonalPart`` keeps the policy on the client; the upload carries the updated alpha
    (averaged into the consensus) but the optimizer state (moments, baseline, step count) as
    received, so nothing personal but alpha is ever averaged.
    """

    def __init__(self, model: SearchNetwork, policy: ReinforcePolicy, child_seed: int, personal: State,
                 **training: Any):
        """``personal``: the client's own policy (empty before its first round); ``policy`` steps it;
        ``training``: how the child is trained (``FedRLNAS.child_training``)."""
        super().__init__(model, **training)
        self.policy, self.child_seed, self.has_policy = policy, child_seed, bool(personal)
        self.callbacks.append(KeepPersonalPart(list(ARCH_NAMES) + model.reinforce.policy_names(), kept=personal,
                                               uploaded=ARCH_NAMES))
        self.first_baseline: float | None = None

    def on_train_start(self) -> None:
        """Runs after ``KeepPersonalPart`` has put the client's own policy in, if it has one."""
        reinforce = self.model.reinforce
        if not self.has_policy:  # a new policy from the consensus alpha, with fresh optimizer state
            if int(reinforce.updates) > 0:
                self.first_baseline = float(reinforce.baseline)
            for name in reinforce.policy_names(prefix=""):
                getattr(reinforce, name).zero_()
        self.train_only(sample_child(self.model, torch.Generator().manual_seed(self.child_seed)))
        super().on_train_start()

    def after_reward(self, reward: float) -> None:
        probabilities = {kind: self.model.op_distribution(kind) for kind in CELL_KINDS}
        self.policy.step(self.model.state_dict(), probabilities, [self.child], [reward], self.first_baseline)


class PerFedRLNAS(FedRLNAS):
    """FedRLNAS' supernet and masked averaging, with the policies on the clients (see the module doc)."""


    def local_module(self, model: SearchNetwork, task: ClientTask) -> PersonalChildTraining:
        """The child is drawn at the fit's start, once the client's own policy is in, from the task's seed."""
        # one draw of a generator of the task's seed: the child seed the backend-seeded global generator gave
        child_seed = int(torch.randint(0, 2**31 - 1, (), generator=torch.Generator().manual_seed(task.seed)))
        return PersonalChildTraining(model, self.policy, child_seed, task.personal, **self.child_training(task.plan))

    def aggregator(self, model: SearchNetwork, global_state: State) -> ReinforceAggregator:
        return ReinforceAggregator(self.reinforce_step, model, global_state, server_keys=("reinforce.",))

    def reinforce_step(self, model: SearchNetwork, state: State, children: list[Child], rewards: list[float]) -> None:
        """The server has no policy of its own: it keeps the federation's baseline and the round's mean reward."""
        self.policy.advance_baseline(state, rewards)
        state["reinforce.reward"].fill_(sum(rewards) / len(rewards))

    def personalization_budget(self) -> str:
        return "personal policy: one REINFORCE step per round a client takes part in"

    def adapt(self, model: SearchNetwork, client: ClientData, batch_size: int, seed: int,
              personal: dict[str, torch.Tensor]) -> SearchNetwork:
        """The argmax child of the client's own policy on the shared weights (the global one without a policy)."""
        adapted = copy.deepcopy(model)
        load_parameter_values(adapted, {name: personal[name] for name in ARCH_NAMES if name in personal})
        return adapted.eval()
