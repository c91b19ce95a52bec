"""PerFedRLNAS (Yao and Li, AAAI 2024): one shared supernet, one architecture policy per client.

FedRLNAS with a policy per client: client k draws its child from its own alpha_k, trains that
child's weights alone, and takes the REINFORCE step of alpha_k with its own reward R_k (the
child's val accuracy after training) against its own moving-average baseline b_k,

    alpha_k <- alpha_k + lr_alpha * Adam((R_k - b_k) * (one_hot(a_k) - softmax(alpha_k))),

the same step as FedRLNAS' server takes with one client. The step needs nothing but client k's
child and reward, so it runs where they are; alpha_k, its Adam moments, b_k and its step count
are the client's personal state, which the server keeps and checkpoints per client. The first
step of a client starts its baseline from the federation's (the server's moving average of the
round mean reward, sent with the round's plan), or from its own reward when the federation has
none yet.

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

from federated_nas.algorithms.core.aggregation import State
from federated_nas.algorithms.core.base import ClientTask
from federated_nas.algorithms.core.personal import KeepPersonalPart, load_parameter_values
from federated_nas.algorithms.core.reinforce import ReinforcePolicy, new_policy_state, policy_names
from federated_nas.algorithms.nas.fedrlnas import ChildTraining, FedRLNAS, ReinforceAggregator
from federated_nas.data.federated_data import FederatedData
from federated_nas.search_space.children import Child, sample_child
from federated_nas.search_space.supernet import CELL_KINDS, SearchNetwork

ARCH_NAMES = tuple(f"alpha_{kind}" for kind in CELL_KINDS)
FEDERATION_BASELINE = "federation_baseline"  # its key in ``RoundPlan.server_values``


class PersonalChildTraining(ChildTraining):
    """A client's round: its own policy in, a child drawn from it and trained, the policy's step, the policy out.

    ``KeepPersonalPart`` keeps the policy on the client; the upload carries the updated alpha
    (averaged into the consensus) but never the optimizer state (moments, baseline, step count),
    which is no tensor of the model.
    """

    def __init__(self, model: SearchNetwork, policy: ReinforcePolicy, child_seed: int, personal: State,
                 federation_baseline: float | None = None, **training: Any):
        """``personal``: the client's own policy (empty before its first round); ``policy`` steps it;
        ``federation_baseline``: the server's (None before its first round), where a new policy's baseline
        starts; ``training``: how the child is trained (``FedRLNAS.child_training``)."""
        super().__init__(model, **training)
        self.policy, self.child_seed = policy, child_seed
        if personal:
            self.optimizer_state = {name: personal[name].clone() for name in policy_names()}
            self.first_baseline = None
        else:  # a new policy from the consensus alpha, with fresh optimizer state
            self.optimizer_state = new_policy_state(*model.alpha_normal.shape)
            self.first_baseline = federation_baseline
        kept = {name: personal[name] for name in ARCH_NAMES if name in personal}
        self.callbacks.append(KeepPersonalPart(ARCH_NAMES, kept=kept, uploaded=ARCH_NAMES,
                                               outside_model=self.optimizer_state))

    def on_train_start(self) -> None:
        """Runs after ``KeepPersonalPart`` has put the client's own policy in, if it has one, and once the model is
        on its device, where the optimizer state goes too."""
        for name, value in self.optimizer_state.items():
            self.optimizer_state[name] = value.to(self.device)
        self.train_only(sample_child(self.model, torch.Generator().manual_seed(self.child_seed)))
        super().on_train_start()

    def after_reward(self, reward: float) -> None:
        probabilities = {kind: self.model.op_distribution(kind) for kind in CELL_KINDS}
        self.policy.step({**self.model.state_dict(), **self.optimizer_state}, probabilities, [self.child], [reward],
                         self.first_baseline)


class PerFedRLNAS(FedRLNAS):
    """FedRLNAS' supernet and masked averaging, with the policies on the clients (see the module doc)."""


    def local_module(self, model: SearchNetwork, task: ClientTask) -> PersonalChildTraining:
        """The child is drawn at the fit's start, once the client's own policy is in, from the task's seed."""
        # one draw of a generator of the task's seed: the child seed the backend-seeded global generator gave
        child_seed = int(torch.randint(0, 2**31 - 1, (), generator=torch.Generator().manual_seed(task.seed)))
        return PersonalChildTraining(model, self.policy, child_seed, task.personal,
                                     task.plan.server_values.get(FEDERATION_BASELINE),
                                     **self.child_training(task.plan))

    def build_model(self, data: FederatedData) -> SearchNetwork:
        """The server keeps no policy, only the federation's baseline and how many rounds moved it."""
        model = super().build_model(data)
        self.server_policy = {name: self.server_policy[name] for name in ("reinforce.baseline", "reinforce.updates")}
        return model

    def aggregator(self, model: SearchNetwork, global_state: State) -> ReinforceAggregator:
        return ReinforceAggregator(self.reinforce_step, model, global_state, server_keys=())

    def reinforce_step(self, model: SearchNetwork, state: State, children: list[Child], rewards: list[float]) -> None:
        """The server has no policy of its own: it keeps the federation's baseline and the round's mean reward."""
        self.policy.advance_baseline(self.server_policy, rewards)
        self.last_reward = sum(rewards) / len(rewards)

    def round_values(self) -> dict[str, float]:
        """The federation's baseline, once it has one: where a client's first policy starts its own."""
        policy = self.server_policy
        return {FEDERATION_BASELINE: float(policy["reinforce.baseline"])} if int(policy["reinforce.updates"]) else {}

    def personalization_budget(self) -> str:
        return "personal policy: one REINFORCE step per round a client takes part in"

    def adapt(self, model: SearchNetwork, task: ClientTask) -> SearchNetwork:
        """The argmax child of the client's own policy on the shared weights (the global one without a policy)."""
        adapted = copy.deepcopy(model)
        load_parameter_values(adapted, {name: task.personal[name] for name in ARCH_NAMES if name in task.personal})
        return adapted.eval()
