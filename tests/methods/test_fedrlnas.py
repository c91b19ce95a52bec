"""FedRLNAS: fixed children, per-entry masked averaging, the REINFORCE step, a tiny run and resume."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from federated_nas.algorithms.core.aggregation import MaskedAverage, WeightedAverage
from federated_nas.algorithms.core.reinforce import adam_ascent, reinforce_direction
from federated_nas.errors import ConfigError, DataError
from federated_nas.federation.checkpoint import load_latest_checkpoint
from federated_nas.runs import run_search
from federated_nas.search_space.children import argmax_child, child_entry_masks, one_hot_weights, sample_child
from federated_nas.search_space.relaxations import ArgmaxChild, FixedChild
from federated_nas.search_space.supernet import CELL_KINDS, MASKED, SearchNetwork
from helpers import assert_same_checkpoints, crash_then_resume, tiny_rl_algorithm


def child_masks_network(net: SearchNetwork, child) -> dict[str, torch.Tensor]:
    """Op masks that keep exactly the child's op on every edge."""
    return {f"op_mask_{kind}": F.one_hot(child[kind], len(net.primitives)).bool() for kind in CELL_KINDS}


def test_fixed_child_computes_exactly_the_child_network():
    """The supernet with a fixed one-hot child equals the supernet pruned to that child (float64)."""
    torch.manual_seed(0)
    net = SearchNetwork(1, 3, C=4, layers=3).double()
    with torch.no_grad():
        net.alpha_normal[:, 2] = MASKED  # a removed op is never sampled
        net.op_mask_normal[:, 2] = False
    torch.manual_seed(5)
    child = sample_child(net)
    assert not (child["normal"] == 2).any()
    fixed, pruned = copy.deepcopy(net), copy.deepcopy(net)
    fixed.relaxation = FixedChild(one_hot_weights(net, child))
    pruned.prune_to(child_masks_network(net, child))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    for mode in (False, True):  # BatchNorm in eval, then in train mode
        torch.testing.assert_close(fixed.train(mode)(x), pruned.train(mode)(x), rtol=1e-10, atol=1e-12)
    argmax = copy.deepcopy(net)
    argmax.relaxation = ArgmaxChild()
    best = copy.deepcopy(net)
    best.prune_to(child_masks_network(net, argmax_child(net)))
    torch.testing.assert_close(argmax.eval()(x), best.eval()(x), rtol=1e-10, atol=1e-12)


def test_child_masks_cover_exactly_the_weights_the_child_trains():
    torch.manual_seed(1)
    net = SearchNetwork(1, 3, C=4, layers=3).double()
    child = sample_child(net)
    net.relaxation = FixedChild(one_hot_weights(net, child))
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,))
    F.cross_entropy(net(x), y).backward()
    masks = child_entry_masks(net, child)
    params = dict(net.named_parameters())
    assert masks and all(key in net.state_dict() for key in masks)
    for key, mask in masks.items():
        if key not in params:
            continue
        grad = params[key].grad if params[key].grad is not None else torch.zeros_like(params[key])
        assert not grad[~mask].any(), key  # nothing outside the child moves
        if mask.any():
            assert grad[mask].abs().sum() > 0, key
    # every op that the child runs on some edge has its weights marked
    assert any(mask.any() for mask in masks.values()) and not all(mask.all() for mask in masks.values())


def test_masked_average_known_answer():
    template = {"w": torch.tensor([1.0, 2.0, 3.0, 4.0]), "n": torch.tensor(7)}
    average = MaskedAverage(template)
    average.add({"w": torch.tensor([10.0, 10.0, 10.0, 10.0]), "n": torch.tensor(9)}, 1.0,
                {"w": torch.tensor([True, True, False, False])})
    average.add({"w": torch.tensor([40.0, 40.0, 40.0, 40.0]), "n": torch.tensor(9)}, 3.0,
                {"w": torch.tensor([False, True, True, False])})
    result = average.result()
    # entry 0: client 1 alone; 1: (1*10 + 3*40) / 4; 2: client 2 alone; 3: nobody, keeps its value
    torch.testing.assert_close(result["w"], torch.tensor([10.0, 32.5, 40.0, 4.0]))
    assert int(result["n"]) == 9
    with pytest.raises(DataError, match="participation mask"):
        average.add(template, 1.0, {"w": torch.tensor([True])})


def test_masked_average_without_masks_is_the_weighted_average_bit_for_bit():
    torch.manual_seed(0)
    states = [{"a": torch.randn(3, 2), "b": torch.randint(0, 9, (4,))} for _ in range(3)]
    plain, masked = WeightedAverage(states[0]), MaskedAverage(states[0])
    for state, weight in zip(states, (3.0, 1.0, 7.0)):
        plain.add(state, weight)
        masked.add(state, weight)
    for key, value in plain.result().items():
        assert torch.equal(value, masked.result()[key])


def test_reinforce_direction_and_adam_step_known_answer():
    """p = (1/2, 1/2); a_1 = 0 with R = 1, a_2 = 1 with R = 0; b = 1/4."""
    p = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    g = reinforce_direction(p, [torch.tensor([0]), torch.tensor([1])], [1.0, 0.0], baseline=0.25)
    # (0.75 * (1/2, -1/2) + (-0.25) * (-1/2, 1/2)) / 2 = (1/4, -1/4)
    torch.testing.assert_close(g, torch.tensor([[0.25, -0.25]], dtype=torch.float64))
    alpha, m, v = torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), \
        torch.zeros(1, 2, dtype=torch.float64)
    adam_ascent(alpha, g, m, v, step=1, lr=0.1, betas=(0.5, 0.999), eps=0.0)
    torch.testing.assert_close(alpha, torch.tensor([[0.1, -0.1]], dtype=torch.float64))  # bias-corrected: lr*sign
    torch.testing.assert_close(m, 0.5 * g)
    torch.testing.assert_close(v, 0.001 * g * g)
    adam_ascent(alpha, g, m, v, step=2, lr=0.1, betas=(0.5, 0.999), eps=0.0)  # same g: another lr*sign
    torch.testing.assert_close(alpha, torch.tensor([[0.2, -0.2]], dtype=torch.float64))


def add_client(aggregator, model, child, reward, shift, weight=1.0) -> None:
    """A client's update (the global state, weights shifted) with its child and reward in its report."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key, value in state.items():
        if value.is_floating_point() and not key.startswith(("alpha_", "reinforce.")):
            value.add_(shift)
    report = {f"child_{kind}": torch.tensor(child[kind]) for kind in CELL_KINDS}
    aggregator.add(state, weight, {**report, "reward": torch.tensor(reward)})


def test_server_step_known_answer_first_then_second_round():
    """Round 1: b = mean R = 1/2; with p = (1/2, 1/2) on every edge, plain ascent at lr 0.1."""
    algorithm, model = tiny_rl_algorithm(alpha_update="ascent", alpha_lr=0.1, baseline_decay=0.9)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    children = [{"normal": [0, 1], "reduce": [1, 1]}, {"normal": [1, 1], "reduce": [1, 0]}]
    aggregator = algorithm.aggregator(model, global_state)
    add_client(aggregator, model, children[0], 1.0, shift=1.0)
    add_client(aggregator, model, children[1], 0.0, shift=3.0)
    new = aggregator.result()
    # normal edge 0: (1/2 (1/2, -1/2) - 1/2 (-1/2, 1/2)) / 2 = (1/4, -1/4); edge 1: both chose op 1, cancels
    torch.testing.assert_close(new["alpha_normal"], torch.tensor([[0.025, -0.025], [0.0, 0.0]]))
    torch.testing.assert_close(new["alpha_reduce"], torch.tensor([[0.0, 0.0], [-0.025, 0.025]]))
    policy = algorithm.server_policy  # the server's own state, no entry of the model
    assert not any(key.startswith("reinforce.") for key in new)
    assert float(policy["reinforce.baseline"]) == pytest.approx(0.5)
    assert algorithm.last_reward == pytest.approx(0.5) and int(policy["reinforce.updates"]) == 1
    # weights: each entry is the mean over the clients whose child used it (shifts +1 and +3)
    masks = [child_entry_masks(model, {k: torch.tensor(v) for k, v in c.items()}) for c in children]
    for key, before in global_state.items():
        if key not in masks[0] or not before.is_floating_point():
            continue
        used = masks[0][key].int() + 2 * masks[1][key].int()  # 0 nobody, 1 first, 2 second, 3 both
        expected = before + torch.tensor([0.0, 1.0, 3.0, 2.0])[used]
        torch.testing.assert_close(new[key], expected, msg=key)
    torch.testing.assert_close(new["classifier.weight"], global_state["classifier.weight"] + 2.0)  # every child uses it

    # round 2: the stored baseline b = 0.2; rewards 0.6 and 0.2 -> advantages 0.4 and 0.0
    model.load_state_dict(new)
    with torch.no_grad():
        policy["reinforce.baseline"].fill_(0.2)
        model.alpha_normal.zero_()
    aggregator = algorithm.aggregator(model, {k: v.clone() for k, v in model.state_dict().items()})
    add_client(aggregator, model, children[0], 0.6, shift=0.0)
    add_client(aggregator, model, children[1], 0.2, shift=0.0)
    new = aggregator.result()
    torch.testing.assert_close(new["alpha_normal"], torch.tensor([[0.01, -0.01], [-0.01, 0.01]]))
    assert float(policy["reinforce.baseline"]) == pytest.approx(0.9 * 0.2 + 0.1 * 0.4)
    assert int(policy["reinforce.updates"]) == 2


def test_bad_child_or_reward_is_rejected():
    algorithm, model = tiny_rl_algorithm()
    aggregator = algorithm.aggregator(model, model.state_dict())
    with pytest.raises(DataError, match="live op"):
        add_client(aggregator, model, {"normal": [0, 2], "reduce": [0, 0]}, 0.5, 0.0)
    with pytest.raises(DataError, match="reward"):
        add_client(aggregator, model, {"normal": [0, 1], "reduce": [0, 0]}, 1.5, 0.0)
    assert aggregator.count == 0


def test_reinforce_on_a_two_arm_problem_moves_probability_to_the_better_arm():
    """Arm 0 of normal edge 0 pays 0.8, arm 1 pays 0.2: its probability rises from 1/2 toward 1."""
    algorithm, model = tiny_rl_algorithm(alpha_lr=0.05)
    torch.manual_seed(0)
    for _ in range(30):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        children = [sample_child(model) for _ in range(4)]
        rewards = [0.8 if int(c["normal"][0]) == 0 else 0.2 for c in children]
        algorithm.reinforce_step(model, state, children, rewards)
        model.load_state_dict(state)
    p = torch.softmax(model.alpha_normal.detach(), -1)
    assert float(p[0, 0]) > 0.75
    assert abs(float(p[1, 0]) - 0.5) < 0.2  # an edge whose choice pays nothing stays near uniform


@pytest.mark.parametrize("override, message", [
    ("algorithm.baseline_decay=1.0", "baseline_decay"),
    ("algorithm.alpha_update=momentum", "alpha_update"),
    ("algorithm.reward_batches=0", "reward_batches"),
    ("algorithm.local_step=adam", "local_step"),
    ("algorithm.pruning.at=[1.5]", "pruning.at"),
])
def test_bad_fedrlnas_config_is_one_clear_error(tiny_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        run_search(tiny_cfg("search", ["logger=none", "algorithm=fedrlnas", override]))


@pytest.mark.end_to_end
def test_two_round_fedrlnas_run_and_resume_equality(tiny_cfg, monkeypatch):
    overrides = ["logger=none", "algorithm=fedrlnas", "federation.client_fraction=0.67",
                 "algorithm.reward_batches=1"]
    whole = run_search(tiny_cfg("search", overrides, run="whole"))
    history = load_latest_checkpoint(Path(whole["run_dir"]) / "checkpoints")["history"]
    for row in history:
        assert 0.0 <= row["reward_mean"] <= 1.0 and 0.0 <= row["reward_baseline"] <= 1.0
        assert 0.0 <= row["global_test_acc"] <= 1.0 and "genotype" in row and row["alpha_entropy"] > 0
    # the server evaluates the argmax child: the same accuracy as that child cut out of the supernet
    assert whole["global_test_acc"] == whole["global_test_acc_discrete"]
    assert whole["child_params"] < whole["supernet_params"]
    checkpoint = load_latest_checkpoint(Path(whole["run_dir"]) / "checkpoints")
    server = checkpoint["algorithm_state"]  # the policy's state is the server's, beside the model, not in it
    assert int(server["reinforce.updates"]) == 2 and float(server["reinforce.baseline"]) > 0
    assert not any(key.startswith("reinforce.") for key in checkpoint["model"])
    assert_same_checkpoints(whole, crash_then_resume(tiny_cfg, overrides, monkeypatch))


def test_fixed_child_is_keyed_by_cell_kind_not_by_call_order():
    """Before, the children cycled by call count: one extra call swapped the normal and the reduce child."""
    torch.manual_seed(0)
    net = SearchNetwork(1, 10, C=2, layers=3)
    child = sample_child(net)
    fresh = copy.deepcopy(net)
    net.relaxation = FixedChild(one_hot_weights(net, child))
    fresh.relaxation = FixedChild(one_hot_weights(fresh, child))
    net.op_weights("normal")  # an extra call, as a forward pass that failed after the normal cells would leave
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(net(x), fresh(x), rtol=0, atol=0)
    for kind in ("normal", "reduce"):
        assert torch.equal(net.op_weights(kind), one_hot_weights(net, child)[("normal", "reduce").index(kind)])


@pytest.mark.parametrize("overrides, name", [
    (["algorithm.local_step=maml"], "fedrlnas"),
    (["algorithm.local_step=maml", "algorithm.name=meta_fedrlnas"], "meta_fedrlnas"),
])
def test_a_method_has_one_name_for_its_run_dir_and_its_tags(tiny_cfg, overrides, name):
    """The YAML name labels the run dir and the MLflow tag alike (once the class renamed its maml variant)."""
    from federated_nas.runs import build, run_tags

    cfg = tiny_cfg("search", ["algorithm=fedrlnas", *overrides])
    algorithm = build(cfg.algorithm)
    assert algorithm.maml is not None and algorithm.name == name
    assert cfg.run_name.startswith(f"{name}-") and run_tags(cfg, algorithm)["algorithm"] == name


def test_a_checkpoint_from_when_the_policy_was_in_the_model_restores_it_to_the_server():
    """Checkpoints once kept the policy's state as ``reinforce.*`` buffers of the model (and before that the last
    client's child as ``reinforce.child_*``): restoring moves the state to the server and drops the child."""
    algorithm, model = tiny_rl_algorithm()
    state = model.state_dict()
    moments = torch.arange(4.0).reshape(2, 2)
    legacy = {**state, "reinforce.baseline": torch.tensor(0.4), "reinforce.updates": torch.tensor(3),
              "reinforce.reward": torch.tensor(0.5), "reinforce.exp_avg_normal": moments,
              **{f"reinforce.child_{kind}": torch.zeros(2, dtype=torch.int64) for kind in CELL_KINDS}}
    algorithm.restore(model, {"model": legacy, "algorithm_state": {}})
    assert model.state_dict().keys() == state.keys()
    policy = algorithm.server_policy
    assert float(policy["reinforce.baseline"]) == pytest.approx(0.4) and int(policy["reinforce.updates"]) == 3
    torch.testing.assert_close(policy["reinforce.exp_avg_normal"], moments)
    assert algorithm.last_reward == pytest.approx(0.5)
    assert algorithm.server_state(model)["reinforce.updates"] == 3  # and it goes on into the next checkpoint
