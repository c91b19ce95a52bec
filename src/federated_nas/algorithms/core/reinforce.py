"""REINFORCE on an architecture distribution: the policy FedRLNAS' server and PerFedRLNAS' clients both step.

One step of the policy alpha (softmax per edge over the live ops) from children a_k and rewards R_k:

    g = mean_k (R_k - b) * grad_alpha log p(a_k | alpha),  grad log p = one_hot(a_k) - softmax(alpha) per edge,
    alpha <- alpha + lr_alpha * Adam(g)   (``alpha_update: ascent``: alpha + lr_alpha * g),
    b <- decay * b + (1 - decay) * mean_k R_k,

with b the moving-average baseline from before the step; the first step uses its own mean reward
(or a baseline it is given), so its advantages are centred rather than all positive. The policy's
optimizer state (Adam's moments, its step count, b: ``new_policy_state``) is kept by the policy's owner
outside the model (FedRLNAS' server in its checkpointed server state, a PerFedRLNAS client in its personal
state), so a resumed run steps exactly alike and no client is sent another's optimizer state.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from federated_nas.algorithms.core.aggregation import State
from federated_nas.errors import ConfigError
from federated_nas.search_space.children import Child
from federated_nas.search_space.supernet import CELL_KINDS

ALPHA_UPDATES = ("adam", "ascent")


POLICY_PREFIX = "reinforce."


def policy_names(prefix: str = POLICY_PREFIX) -> list[str]:
    """The keys of one policy's optimizer state: baseline, step count and Adam moments per cell kind."""
    moments = [f"{moment}_{kind}" for kind in CELL_KINDS for moment in ("exp_avg", "exp_avg_sq")]
    names = ["baseline", "updates", *moments]
    return [prefix + name for name in names]


def new_policy_state(edges: int, ops: int, device: torch.device | str = "cpu") -> State:
    """A policy's optimizer state before its first step (``policy_names``' keys): no model tensor, so it is
    never averaged, sent to clients or counted in the bytes a round moves; its owner checkpoints it."""
    state = {}
    for name in policy_names():
        shape = () if name.endswith(("baseline", "updates")) else (edges, ops)
        state[name] = torch.zeros(shape, dtype=torch.int64 if name.endswith("updates") else torch.float32,
                                  device=device)
    return state


def reinforce_direction(probabilities: torch.Tensor, actions: list[torch.Tensor], rewards: list[float],
                        baseline: float) -> torch.Tensor:
    """mean_k (R_k - b) * grad_alpha log p(a_k): per edge, (R_k - b) * (one_hot(a_k) - p)."""
    direction = torch.zeros_like(probabilities)
    for action, reward in zip(actions, rewards):
        chosen = F.one_hot(action.long().to(probabilities.device), probabilities.shape[-1]).to(probabilities.dtype)
        direction += (reward - baseline) * (chosen - probabilities)
    return direction / len(actions)


def adam_ascent(param: torch.Tensor, direction: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                step: int, lr: float, betas: tuple[float, float], eps: float) -> None:
    """One Adam step *up* ``direction`` (step counts from 1), moments updated in place."""
    beta1, beta2 = betas
    exp_avg.mul_(beta1).add_(direction, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(direction, direction, value=1 - beta2)
    corrected = exp_avg / (1 - beta1 ** step)
    scale = (exp_avg_sq / (1 - beta2 ** step)).sqrt_().add_(eps)
    param.add_(corrected / scale, alpha=lr)


class ReinforcePolicy:
    """The REINFORCE step of one architecture policy, on a state dict that holds its alpha and optimizer state.

    Stateless itself (its settings only), so the server and every client can share one: whose
    policy moves is whichever state is passed, with keys ``alpha_<kind>`` and ``reinforce.*``.
    """

    def __init__(self, lr: float = 3e-3, update: str = "adam", betas: Iterable[float] = (0.5, 0.999),
                 eps: float = 1e-8, baseline_decay: float = 0.99):
        if update not in ALPHA_UPDATES:
            raise ConfigError(f"algorithm.alpha_update must be one of {', '.join(ALPHA_UPDATES)}, got {update!r}")
        if not lr > 0:
            raise ConfigError(f"algorithm.alpha_lr must be > 0, got {lr}")
        if not 0 <= baseline_decay < 1:
            raise ConfigError(f"algorithm.baseline_decay must be in [0, 1), got {baseline_decay}")
        checked = tuple(float(b) for b in betas)
        if len(checked) != 2 or not all(0 <= b < 1 for b in checked):
            raise ConfigError(f"algorithm.alpha_betas must be two numbers in [0, 1), got {list(betas)}")
        self.lr, self.update, self.betas, self.eps, self.baseline_decay = lr, update, checked, eps, baseline_decay

    def step(self, state: State, probabilities: dict[str, torch.Tensor], children: list[Child],
             rewards: list[float], first_baseline: float | None = None) -> None:
        """One REINFORCE step, in place, of the policy whose alpha and optimizer state ``state`` holds.

        ``probabilities`` is the distribution the children were drawn from. The policy's first step
        uses ``first_baseline`` (None: the mean of ``rewards``) as its baseline.
        """
        baseline = self.advance_baseline(state, rewards, first_baseline)
        step = int(state["reinforce.updates"])
        for kind in CELL_KINDS:
            alpha = state[f"alpha_{kind}"]
            direction = reinforce_direction(probabilities[kind].to(torch.float64).cpu(),
                                            [c[kind] for c in children], rewards, baseline).to(alpha)
            if self.update == "adam":
                adam_ascent(alpha, direction, state[f"reinforce.exp_avg_{kind}"],
                            state[f"reinforce.exp_avg_sq_{kind}"], step, self.lr, self.betas, self.eps)
            else:
                alpha.add_(direction, alpha=self.lr)

    def advance_baseline(self, state: State, rewards: list[float], first_baseline: float | None = None) -> float:
        """b <- decay * b + (1 - decay) * mean reward, and one more update counted; returns the b before.

        With no update counted yet, the b before is ``first_baseline`` (None: the mean reward itself,
        so the first advantages are centred rather than all positive).
        """
        mean_reward = sum(rewards) / len(rewards)
        if int(state["reinforce.updates"]) == 0:
            baseline = mean_reward if first_baseline is None else first_baseline
        else:
            baseline = float(state["reinforce.baseline"])
        state["reinforce.baseline"].fill_(self.baseline_decay * baseline + (1 - self.baseline_decay) * mean_reward)
        state["reinforce.updates"].add_(1)
        return baseline
