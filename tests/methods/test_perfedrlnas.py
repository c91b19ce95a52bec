"""PerFedRLNAS: a client's own policy and its REINFORCE step, the server's consensus average, a run and resume."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from federated_nas.algorithms.core.base import ClientTask, RoundPlan, classification_loss
from federated_nas.algorithms.core.reinforce import policy_names
from federated_nas.algorithms.nas.perfedrlnas import ARCH_NAMES, PerFedRLNAS
from federated_nas.federation.backends import LocalBackend, client_seed
from federated_nas.federation.checkpoint import load_latest_checkpoint
from federated_nas.runs import run_search
from federated_nas.search_space.children import one_hot_weights
from federated_nas.search_space.relaxations import FixedChild
from federated_nas.search_space.supernet import CELL_KINDS, SearchNetwork
from helpers import assert_same_checkpoints, crash_then_resume, tiny_client, tiny_rl_algorithm

LR = 0.1


def tiny_algorithm(**options) -> tuple[PerFedRLNAS, SearchNetwork]:
    return tiny_rl_algorithm(PerFedRLNAS, **{"alpha_lr": LR, "alpha_eps": 0.0, **options})


def run_client(algorithm, model, client, personal, round_idx=0):
    """One client's fit through the local backend, as the federated loop runs it (run seed 0), with the plan
    the server would send."""
    backend = LocalBackend(functools.partial(L.Trainer))
    plan = RoundPlan(round_idx, 2, seed=0, local_epochs=1, local_batches=1, batch_size=4,
                     server_values=algorithm.round_values())
    return next(backend.run_round(algorithm, model, [client], plan, personal=personal))


def test_client_round_takes_its_own_policy_step_and_keeps_it():
    """A client's first step: baseline from the federation (0.3), Adam's first step = lr * sign(direction)."""
    algorithm, model = tiny_algorithm()
    algorithm.server_policy["reinforce.updates"].fill_(4)  # the server has had 4 rounds: its baseline counts
    algorithm.server_policy["reinforce.baseline"].fill_(0.3)
    update = run_client(algorithm, model, tiny_client(0, seed=1), personal={})
    reward = float(update.report["reward"])
    kept = update.personal
    assert set(kept) == set(ARCH_NAMES) | set(policy_names())
    assert int(kept["reinforce.updates"]) == 1  # the client's own count, not the server's 4
    assert float(kept["reinforce.baseline"]) == pytest.approx(0.99 * 0.3 + 0.01 * reward)
    for kind in CELL_KINDS:
        child = update.report[f"child_{kind}"]
        direction = (reward - 0.3) * (F.one_hot(child, 2).double() - 0.5)
        torch.testing.assert_close(kept[f"alpha_{kind}"], (LR * direction.sign()).float())
        torch.testing.assert_close(update.state[f"alpha_{kind}"], kept[f"alpha_{kind}"])  # its policy goes up
    assert not any(key.startswith("reinforce.") for key in update.state)  # its optimizer state does not

    # next round: the kept policy is back in; the step count goes on and the baseline is the client's own
    again = run_client(algorithm, model, tiny_client(0, seed=1), personal={0: kept}, round_idx=1)
    assert int(again.personal["reinforce.updates"]) == 2
    reward_2 = float(again.report["reward"])
    assert float(again.personal["reinforce.baseline"]) == pytest.approx(
        0.99 * float(kept["reinforce.baseline"]) + 0.01 * reward_2)


def test_first_client_step_without_a_federation_baseline_is_its_own_reward():
    algorithm, model = tiny_algorithm(alpha_eps=1e-8)
    update = run_client(algorithm, model, tiny_client(0, seed=2), personal={})
    reward = float(update.report["reward"])
    assert float(update.personal["reinforce.baseline"]) == pytest.approx(reward)  # b = R: no advantage, no move
    for name in ARCH_NAMES:
        assert not update.personal[name].any()


def test_server_averages_the_policies_and_keeps_only_the_federation_baseline():
    algorithm, model = tiny_algorithm(baseline_decay=0.5)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    aggregator = algorithm.aggregator(model, global_state)
    for alpha, child, reward, weight in ((1.0, [0, 1], 0.8, 1.0), (-2.0, [1, 1], 0.2, 3.0)):
        state = {k: v.clone() for k, v in global_state.items()}
        report = {"reward": torch.tensor(reward)}
        for kind in CELL_KINDS:
            state[f"alpha_{kind}"].fill_(alpha)
            report[f"child_{kind}"] = torch.tensor(child)
        aggregator.add(state, weight, report)
    assert algorithm.round_values() == {}  # no federation baseline before the first round's rewards
    new = aggregator.result()
    for kind in CELL_KINDS:
        torch.testing.assert_close(new[f"alpha_{kind}"], torch.full((2, 2), (1.0 - 6.0) / 4))
    policy = algorithm.server_policy
    assert float(policy["reinforce.baseline"]) == pytest.approx(0.5)  # first round: the mean reward
    assert algorithm.last_reward == pytest.approx(0.5) and int(policy["reinforce.updates"]) == 1
    assert algorithm.round_values() == {"federation_baseline": pytest.approx(0.5)}  # sent with the next plan


@pytest.mark.end_to_end
def test_two_round_perfedrlnas_run_keeps_policies_per_client_and_resumes_exactly(tiny_cfg, monkeypatch):
    overrides = ["logger=none", "algorithm=perfedrlnas", "algorithm.reward_batches=1", "algorithm.alpha_lr=0.5"]
    straight = run_search(tiny_cfg("search", overrides + ["personalize=true"], run="straight"))
    checkpoint = load_latest_checkpoint(Path(straight["run_dir"]) / "checkpoints")
    assert checkpoint["personal"].keys() == {"0", "1", "2"}
    for state in checkpoint["personal"].values():
        assert int(state["reinforce.updates"]) == 2  # every client took part in both rounds
    policies = [state["alpha_normal"] for state in checkpoint["personal"].values()]
    assert any(not torch.equal(policies[0], other) for other in policies[1:])  # each client its own
    assert 0.0 <= straight["personalized_acc_after_mean"] <= 1.0
    local = json.loads((Path(straight["run_dir"]) / "personalized" / "client_accuracy.json").read_text())
    assert local["clients"] == [0, 1, 2]
    assert (Path(straight["run_dir"]) / "personalized" / "client_2.json").exists()  # each client's own genotype
    assert int(checkpoint["algorithm_state"]["reinforce.updates"]) == 2 and 0 < straight["reward_mean"] <= 1

    assert_same_checkpoints(straight, crash_then_resume(tiny_cfg, overrides, monkeypatch))


def test_maml_child_step_known_answer():
    """meta-: w <- w - lr * dL_query(w - inner_lr * dL_support(w)) on the child's weights, alpha untouched."""
    algorithm, model = tiny_algorithm(local_step="maml", inner_lr=0.05, lr=0.1, lr_min=0.1, grad_clip=None)
    assert algorithm.maml == (1, 0.05)
    client = tiny_client(0, seed=3)
    update = run_client(algorithm, model, client, personal={})

    reference = copy.deepcopy(model).train()
    child = {kind: update.report[f"child_{kind}"] for kind in CELL_KINDS}
    reference.relaxation = FixedChild(one_hot_weights(reference, child))
    plan = RoundPlan(0, 2, seed=0, local_epochs=1, local_batches=1, batch_size=4)
    task = next(iter(algorithm.client_loader(ClientTask(client, plan, client_seed(0, 0, 0)))))
    weights = reference.weight_parameters()
    start = [w.detach().clone() for w in weights]
    grads = torch.autograd.grad(classification_loss(reference, task["support"]), weights, allow_unused=True)
    with torch.no_grad():
        for w, g in zip(weights, grads):
            if g is not None:
                w.sub_(0.05 * g)
    grads = torch.autograd.grad(classification_loss(reference, task["query"]), weights, allow_unused=True)
    with torch.no_grad():
        for w, w0, g in zip(weights, start, grads):
            w.copy_(w0 if g is None else w0 - 0.1 * g)
    expected = reference.state_dict()
    moved = 0
    for key, value in update.state.items():
        if not key.startswith("alpha_"):
            torch.testing.assert_close(value, expected[key], msg=key)
            moved += int(not torch.equal(value, model.state_dict()[key]))
    assert moved > 0


@pytest.mark.end_to_end
def test_two_round_meta_perfedrlnas_prunes_on_the_averaged_policy(tiny_cfg):
    overrides = ["logger=none", "algorithm=meta_perfedrlnas", "algorithm.reward_batches=1", "algorithm.alpha_lr=0.5",
                 "algorithm.pruning.at=[0.5]", "algorithm.pruning.threshold=0.2", "personalize=true"]
    final = run_search(tiny_cfg("search", overrides))
    checkpoint = load_latest_checkpoint(Path(final["run_dir"]) / "checkpoints")
    assert checkpoint["history"][0]["pruned_ops"] > 0 and "pruned_ops" not in checkpoint["history"][1]
    masks = [mask for name, mask in checkpoint["model"].items() if name.startswith("op_mask_")]
    assert any(not mask.all() for mask in masks) and all(mask.any(1).all() for mask in masks)
    assert {int(state["reinforce.updates"]) for state in checkpoint["personal"].values()} == {2}
    assert 0.0 <= final["personalized_acc_after_mean"] <= 1.0
