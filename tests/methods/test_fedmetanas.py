"""FedMetaNAS (and its paper variant): Gumbel-softmax, input combinations, real pruning, first-order MAML,
BatchNorm recalibration, its tiny runs and the scripts that read them."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import pytest
import torch

from federated_nas.algorithms.core.local_steps import MetaSearch
from federated_nas.algorithms.core.schedules import TemperatureSchedule
from federated_nas.errors import ConfigError
from federated_nas.federation.checkpoint import load_latest_checkpoint
from federated_nas.runs import run_search
from federated_nas.search_space.network import count_parameters
from federated_nas.search_space.operations import PRIMITIVES
from federated_nas.search_space.relaxations import (GumbelSoftmaxRelaxation, SoftmaxRelaxation,
                                                    TemperedSoftmaxRelaxation, anneal)
from federated_nas.search_space.supernet import MASKED, SearchNetwork, node_input_combinations
from helpers import (assert_same_states, compose_config, crash_then_resume, grads, load_script, run_one_step, tiny_batch,
                     tiny_client)

OPS = {name: k for k, name in enumerate(PRIMITIVES)}


def test_gumbel_softmax_limits():
    torch.manual_seed(0)
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0]])
    relax = GumbelSoftmaxRelaxation(temperature=1e-4).train()
    for _ in range(20):  # temperature -> 0: every sample is one-hot
        sample = relax(logits)
        assert torch.allclose(sample.max(), torch.tensor(1.0)) and torch.isclose(sample.sum(), torch.tensor(1.0))
    relax = GumbelSoftmaxRelaxation(temperature=1.0).eval()  # noise off: exactly the softmax
    torch.testing.assert_close(relax(logits), torch.softmax(logits, -1))
    relax.temperature = 0.5
    torch.testing.assert_close(relax(logits), torch.softmax(logits / 0.5, -1))


def test_gumbel_noise_is_reproducible_by_seed():
    relax = GumbelSoftmaxRelaxation(1.0).train()
    torch.manual_seed(3)
    first = relax(torch.zeros(5, 8))
    torch.manual_seed(3)
    assert torch.equal(first, relax(torch.zeros(5, 8)))


def test_temperature_schedules():
    assert anneal(1.0, 0.1, 0, 10) == pytest.approx(1.0)
    assert anneal(1.0, 0.1, 9, 10) == pytest.approx(0.1)
    assert anneal(1.0, 0.1, 9, 10, "exponential") == pytest.approx(0.1)
    assert anneal(1.0, 0.1, 0, 10, "cosine") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        anneal(1.0, 0.1, 0, 10, "zigzag")


def test_tempered_softmax_is_the_noise_free_gumbel_softmax_in_training_too():
    """MetaNAS' normalizer: softmax(alpha / T) in training and evaluation alike."""
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0]])
    relax = TemperedSoftmaxRelaxation(temperature=0.25).train()
    torch.manual_seed(0)
    expected = torch.softmax(logits / 0.25, -1)
    torch.testing.assert_close(relax(logits), expected)
    torch.testing.assert_close(relax(logits), expected)  # no draw: the same weights every call
    torch.testing.assert_close(relax.eval()(logits), GumbelSoftmaxRelaxation(0.25).eval()(logits))


def test_temperature_clocks():
    """rounds: one value per round; task: each task's inner steps anneal start -> end, the query at end."""
    per_round = TemperatureSchedule(start=1.0, end=0.1, clock="rounds")
    assert per_round.temperature_at(0, 10) == pytest.approx(1.0)
    assert per_round.temperature_at(9, 10) == pytest.approx(0.1)
    assert per_round.task_temperatures(3) is None
    per_task = TemperatureSchedule(start=1.0, end=0.1, clock="task")
    assert per_task.task_temperatures(2) == pytest.approx([1.0, 0.55, 0.1])
    assert per_task.task_temperatures(0) == pytest.approx([0.1])
    assert per_task.temperature_at(0, 10) == per_task.temperature_at(5, 10) == pytest.approx(0.1)
    for bad in ({"clock": "epochs"}, {"start": 0.0}, {"end": "cold"}):
        with pytest.raises(ConfigError, match="algorithm.temperature"):
            TemperatureSchedule(**bad)


def test_first_order_maml_step_with_a_per_task_temperature():
    """Inner step at T = 1, query at T = 0.1 (clock: task with one inner step), then the meta step."""
    torch.manual_seed(0)
    model = SearchNetwork(1, 3, C=2, layers=1, relaxation=TemperedSoftmaxRelaxation(0.1))
    support, query = tiny_batch(4), tiny_batch(5)
    adapted = copy.deepcopy(model)
    params = adapted.weight_parameters() + adapted.arch_parameters()
    eta, beta = 0.05, 0.1
    adapted.relaxation.temperature = 1.0
    inner = grads(adapted, support, params)
    with torch.no_grad():
        for p, g in zip(params, inner):
            p.sub_(eta * g)
    adapted.relaxation.temperature = 0.1
    meta_grad = grads(adapted, query, params)
    start = [p.detach().clone() for p in model.weight_parameters() + model.arch_parameters()]
    module = MetaSearch(model, torch.optim.SGD, functools.partial(torch.optim.SGD, lr=beta), lr=beta,
                        inner_steps=1, inner_lr_w=eta, inner_lr_alpha=eta, grad_clip=None,
                        task_temperatures=[1.0, 0.1])
    run_one_step(module, {"support": support, "query": query})
    for new, old, g in zip(model.weight_parameters() + model.arch_parameters(), start, meta_grad):
        torch.testing.assert_close(new, old - beta * g, rtol=1e-4, atol=1e-6)
    assert model.relaxation.temperature == pytest.approx(0.1)  # what the server then evaluates at


def test_w_that_keeps_its_support_steps_takes_the_query_step_from_the_adapted_point():
    """w <- (w - eta grad_w L_s) - beta grad_w L_q(w', a'); alpha <- alpha - beta grad_a L_q(w', a') as in MAML."""
    torch.manual_seed(0)
    model = SearchNetwork(1, 3, C=2, layers=1)
    support, query = tiny_batch(4), tiny_batch(5)
    adapted = copy.deepcopy(model)
    params = adapted.weight_parameters() + adapted.arch_parameters()
    eta, beta = 0.05, 0.1
    inner = grads(adapted, support, params)
    with torch.no_grad():
        for p, g in zip(params, inner):
            p.sub_(eta * g)
    meta_grad = grads(adapted, query, params)
    after_support = [p.detach().clone() for p in adapted.weight_parameters()]
    start_alpha = [p.detach().clone() for p in model.arch_parameters()]
    module = MetaSearch(model, torch.optim.SGD, functools.partial(torch.optim.SGD, lr=beta), lr=beta,
                        inner_steps=1, inner_lr_w=eta, inner_lr_alpha=eta, grad_clip=None,
                        w_keeps_support_steps=True)
    run_one_step(module, {"support": support, "query": query})
    weights = len(after_support)
    for new, old, g in zip(model.weight_parameters(), after_support, meta_grad[:weights]):
        torch.testing.assert_close(new, old - beta * g, rtol=1e-4, atol=1e-6)
    for new, old, g in zip(model.arch_parameters(), start_alpha, meta_grad[weights:]):
        torch.testing.assert_close(new, old - beta * g, rtol=1e-4, atol=1e-6)


def test_input_combinations_of_every_node():
    combos = node_input_combinations(steps=4, k=2)
    per_node = [[sources for node, sources in combos if node == n] for n in range(4)]
    assert [len(c) for c in per_node] == [math.comb(n + 2, 2) for n in range(4)] == [1, 3, 6, 10]
    assert per_node[1] == [(0, 1), (0, 2), (1, 2)]
    net = SearchNetwork(1, 3, C=2, layers=1, input_combinations=2)
    # an edge's scale is the total weight of the combinations holding it: each node's scales sum to k
    scales = net.combo_incidence @ net.combination_weights("normal", deterministic=True)
    row = 0
    for node in range(4):
        assert float(scales[row : row + node + 2].sum()) == pytest.approx(2.0)
        row += node + 2


def hand_set_network():
    torch.manual_seed(0)
    net = SearchNetwork(1, 3, C=4, layers=2, relaxation=GumbelSoftmaxRelaxation(0.5), input_combinations=2)
    with torch.no_grad():
        for kind in ("normal", "reduce"):
            alpha = getattr(net, f"alpha_{kind}")
            alpha.normal_(0.0, 0.1)  # every live op keeps a weight far above the threshold
            alpha[:, OPS["sep_conv_5x5"]] = MASKED       # weight exactly zero on every edge
            alpha[3, OPS["dil_conv_3x3"]] = MASKED
            beta = getattr(net, f"beta_{kind}")
            beta.fill_(MASKED)
            for index in net.combo_slices:               # node n keeps only its combination (0, 1)
                beta[index[0]] = 0.0
    return net


def test_pruning_removes_known_ops_and_edges_and_keeps_the_function():
    net = hand_set_network().eval()
    x = torch.randn(3, 1, 8, 8)
    before, params_before = net(x), count_parameters(net)
    removed = net.prune(threshold=0.01)
    assert not net.op_mask_normal[:, OPS["sep_conv_5x5"]].any()
    assert not net.op_mask_normal[3, OPS["dil_conv_3x3"]]
    assert removed["combinations"] == 2 * (20 - 4)
    # edges from intermediate nodes belong to no live combination: all their modules are gone
    for cell in net.cells:
        assert all(not bundle.active.any() for bundle in cell.bundles[1:])
        assert "sep_conv_5x5_dw0" not in cell.bundles[0].conv_params
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-6)
    assert count_parameters(net) < params_before / 2


def test_pruned_state_loads_into_a_fresh_network():
    pruned = hand_set_network()
    pruned.prune(0.01)
    fresh = SearchNetwork(1, 3, C=4, layers=2, relaxation=GumbelSoftmaxRelaxation(0.5), input_combinations=2)
    fresh.match_structure(pruned.state_dict())
    fresh.load_state_dict(pruned.state_dict())
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(fresh.eval()(x), pruned.eval()(x))


def test_discretized_network_keeps_exactly_the_genotype():
    net = hand_set_network()
    genotype = net.genotype()
    discrete = net.discretized()
    per_node = lambda genes: [sorted(genes[i : i + 2]) for i in range(0, len(genes), 2)]  # order: by strength
    assert per_node(discrete.genotype().normal) == per_node(genotype.normal)
    assert per_node(discrete.genotype().reduce) == per_node(genotype.reduce)
    assert int(discrete.op_mask_normal.sum()) == len(genotype.normal)
    weights = discrete.op_weights("normal", deterministic=True)
    assert sorted(weights[weights > 0].tolist()) == [1.0] * len(genotype.normal)


@pytest.mark.parametrize("inner", [1, 2])
def test_first_order_maml_step(inner, device):
    """theta' = theta - eta * grad L_s (M times); theta <- theta - beta * grad L_q(theta'), on each device."""
    torch.manual_seed(0)
    model = SearchNetwork(1, 3, C=2, layers=1, relaxation=SoftmaxRelaxation(), input_combinations=2)
    support, query = tiny_batch(4), tiny_batch(5)
    adapted = copy.deepcopy(model).to(device)
    params = adapted.weight_parameters() + adapted.arch_parameters()
    eta_w, eta_a, beta_w, beta_a = 0.05, 0.2, 0.1, 0.3
    rates = [eta_w] * len(adapted.weight_parameters()) + [eta_a] * len(adapted.arch_parameters())
    for _ in range(inner):
        g = grads(adapted, support, params)
        with torch.no_grad():
            for p, gp, rate in zip(params, g, rates):
                p.sub_(rate * gp)
    meta_grad = grads(adapted, query, params)
    start = [p.detach().clone() for p in model.weight_parameters() + model.arch_parameters()]
    module = MetaSearch(model, torch.optim.SGD, functools.partial(torch.optim.SGD, lr=beta_a), lr=beta_w,
                        inner_steps=inner, inner_lr_w=eta_w, inner_lr_alpha=eta_a, grad_clip=None)
    run_one_step(module, {"support": support, "query": query}, device)
    meta_rates = [beta_w] * len(model.weight_parameters()) + [beta_a] * len(model.arch_parameters())
    for new, old, g, rate in zip(model.weight_parameters() + model.arch_parameters(), start, meta_grad, meta_rates):
        torch.testing.assert_close(new.cpu(), old - rate * g.cpu(), rtol=1e-4, atol=1e-6)


@pytest.mark.end_to_end
def test_two_round_fedmetanas_run_with_pruning_and_personalization(tiny_cfg):
    cfg = tiny_cfg("search", ["algorithm=fedmetanas", "personalize=true", "algorithm.pruning.threshold=0.2",
                              "plots_every=0"])
    result = run_search(cfg)
    run_dir = Path(result["run_dir"])
    history = load_latest_checkpoint(run_dir / "checkpoints")["history"]
    assert sum(h.get("pruned_ops", 0) for h in history) > 0
    assert "global_test_acc_discrete" in result
    # bytes_sent counts 3 clients' downloads of the round-0 model; the pruned model is smaller
    assert result["model_bytes"] < history[0]["bytes_sent"] / 3
    assert len(list((run_dir / "personalized").glob("client_[0-9]*.json"))) == 3
    assert (run_dir / "personalized" / "client_accuracy_after.png").is_file()
    assert (run_dir / "figures" / "normal.png").is_file()  # the pruned cell, drawn
    for key in ("personalized_acc_before_mean", "personalized_acc_after_std"):
        assert 0.0 <= result[key] <= 1.0


@pytest.mark.end_to_end
def test_resume_across_a_pruning_round_equals_uninterrupted(tiny_cfg, monkeypatch):
    overrides = ["logger=none", "algorithm=fedmetanas", "federation.rounds=3", "algorithm.pruning.at=[0.34]",
                 "algorithm.pruning.threshold=0.2"]
    whole = run_search(tiny_cfg("search", overrides, run="whole"))
    resumed = crash_then_resume(tiny_cfg, overrides, monkeypatch)
    assert_same_states(load_latest_checkpoint(Path(whole["run_dir"]) / "checkpoints")["model"],
                       load_latest_checkpoint(Path(resumed["run_dir"]) / "checkpoints")["model"])


# --- BatchNorm recalibration (evaluation statistics under the deterministic weights) ---------------

def gumbel_net(seed: int = 0) -> SearchNetwork:
    torch.manual_seed(seed)
    return SearchNetwork(C=2, num_classes=3, layers=2, in_channels=1,
                         relaxation=GumbelSoftmaxRelaxation(0.5), input_combinations=2).double()


def batch_norms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_recalibrated_statistics_are_those_of_the_deterministic_forward():
    """One batch: running mean and var become that batch's statistics under softmax(alpha / T), no Gumbel noise."""
    from federated_nas.algorithms.core.supernet_methods import recalibrate_batch_norm

    net = gumbel_net()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    expected = copy.deepcopy(net).train()
    expected.relaxation.eval()
    for norm in batch_norms(expected):
        norm.reset_running_stats()
        norm.momentum = 1.0  # running statistics := this batch's
    with torch.no_grad():
        expected(x)
    weights = copy.deepcopy(net.state_dict())
    net.eval()
    recalibrate_batch_norm(net, [x])
    assert not net.training and all(norm.momentum == 0.1 for norm in batch_norms(net))
    for got, want in zip(batch_norms(net), batch_norms(expected)):
        torch.testing.assert_close(got.running_mean, want.running_mean)
        torch.testing.assert_close(got.running_var, want.running_var)
        assert int(got.num_batches_tracked) == 1
    for key, value in net.state_dict().items():  # weights and architecture unchanged
        if "running_" not in key and "num_batches" not in key:
            assert torch.equal(value, weights[key]), key


def test_client_upload_carries_statistics_recalibrated_over_its_first_support_batches():
    import lightning as L

    from federated_nas.algorithms.nas.fedmetanas import FedMetaNAS
    from federated_nas.algorithms.core.supernet_methods import recalibrate_batch_norm
    from federated_nas.algorithms.core.base import ClientTask, RoundPlan
    from federated_nas.federation.backends import LocalBackend, client_seed

    space = functools.partial(SearchNetwork, C=2, layers=2)
    algorithm = FedMetaNAS(space, functools.partial(torch.optim.SGD), functools.partial(torch.optim.Adam, lr=0.01),
                           bn_recalibration_batches=1)
    data = type("Data", (), {"in_channels": 1, "num_classes": 3, "input_shape": (1, 8, 8)})()
    torch.manual_seed(0)
    model = algorithm.build_model(data)
    client = tiny_client(0, seed=4)
    plan = RoundPlan(0, 2, seed=0, local_epochs=1, local_batches=2, batch_size=4)
    update = next(LocalBackend(functools.partial(L.Trainer)).run_round(algorithm, model, [client], plan))
    trained = copy.deepcopy(model)
    trained.load_state_dict(update.state)
    first_task, _, _ = next(iter(algorithm.client_loader(ClientTask(client, plan, client_seed(0, 0, 0)))))  # a CombinedLoader's
    first_support = first_task["support"][0]
    algorithm.temperature.apply(trained, 0, 2)
    recalibrate_batch_norm(trained, [first_support])
    for key, value in trained.state_dict().items():
        if "running_" in key:
            torch.testing.assert_close(update.state[key], value, msg=key)


HOLDOUT_SPLIT = "federation.split=[0.5,0.2,0.1,0.2]"  # train / val / local test / holdout: the sweep scores on it


@pytest.fixture(scope="module")
def pruned_at_the_last_round(tmp_path_factory) -> dict:
    """A run whose last round prunes at threshold 0.13, read by the tests below (none writes to it)."""
    return run_search(compose_config("search", tmp_path_factory.mktemp("pruned"), [
        "logger=none", "algorithm=fedmetanas", "algorithm.pruning.at=[1.0]", "algorithm.pruning.threshold=0.13",
        HOLDOUT_SPLIT]))


@pytest.mark.end_to_end
def test_prune_sweep_script_prunes_as_the_last_round_would(pruned_at_the_last_round, tiny_cfg, capsys):
    """A threshold swept after the run removes what the server's last-round pruning removes, at the same
    accuracy: the sweep predicts `algorithm.pruning.threshold` without another run."""
    final = pruned_at_the_last_round
    unpruned = run_search(tiny_cfg("search", ["logger=none", "algorithm=fedmetanas", "algorithm.pruning.at=[]",
                                              HOLDOUT_SPLIT], run="unpruned"))
    script = load_script("prune_sweep")
    report = script.main([unpruned["run_dir"], "--thresholds", "0.13", "0.01", "--on", "test"])
    assert report["scored_on"] == "test"
    assert report["unpruned"]["accuracy"] == pytest.approx(unpruned["global_test_acc"])
    swept = {row["threshold"]: row for row in report["thresholds"]}
    assert swept[0.13]["pruned_ops"] == final["pruned_ops"] > swept[0.01]["pruned_ops"]
    assert swept[0.13]["accuracy"] == pytest.approx(final["global_test_acc"], abs=1e-12)
    assert swept[0.13]["params"] == final["supernet_params"]
    assert script.main([unpruned["run_dir"], "--thresholds", "0.13"])["scored_on"] == "holdout"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        script.main([unpruned["run_dir"], "--thresholds", "1.5"])
    assert capsys.readouterr().err.strip() == "error: --thresholds must lie in (0, 1), got [1.5]"


@pytest.mark.end_to_end
def test_relaxation_diagnosis_script_on_a_tiny_run(tiny_cfg, method_run):
    final = run_search(tiny_cfg("search", ["logger=none", "algorithm=fedmetanas",
                                           "algorithm.bn_recalibration_batches=1"]))
    report = load_script("diagnose_relaxation").main([final["run_dir"], "--samples", "100000", "--gumbel-draws", "20"])
    assert report["accuracy"] == pytest.approx(final["global_test_acc"])  # the last round's, on the whole test set
    assert 0.0 <= report["accuracy_test_batch_norm"] <= 1.0
    assert report["temperature"] == pytest.approx(0.5)  # the last round's, annealed 1.0 -> 0.5
    assert 0.0 < report["eval_max_weight"] <= report["train_max_weight"] <= 1.0
    with pytest.raises(SystemExit):  # one line: FedNAS relaxes with a plain softmax
        load_script("diagnose_relaxation").main([str(method_run("fednas").run_dir)])


def test_default_and_paper_variants(tiny_cfg):
    """Defaults: MetaNAS' tempered softmax over every input; fedmetanas_paper: Gumbel and 2-combinations."""
    from federated_nas.runs import build, build_data

    for variant, relaxation, combinations in (("fedmetanas", TemperedSoftmaxRelaxation, None),
                                              ("fedmetanas_paper", GumbelSoftmaxRelaxation, 2)):
        cfg = tiny_cfg("search", [f"algorithm={variant}", "logger=none"])
        model = build(cfg.algorithm).build_model(build_data(cfg))
        assert type(model.relaxation) is relaxation
        assert (model.combinations is None) == (combinations is None)
        assert model.relaxation.temperature == pytest.approx(1.0)  # the schedule's start


def test_maml_settings_are_one_node_of_the_config(tiny_cfg):
    """algorithm.maml holds the MAML settings (the paper variant overrides two of them, keeping the rest)."""
    from federated_nas.algorithms.core.maml import MAMLSettings
    from federated_nas.runs import build

    default, paper = (build(tiny_cfg("search", [f"algorithm={name}"]).algorithm).maml
                      for name in ("fedmetanas", "fedmetanas_paper"))
    assert default == MAMLSettings(inner_steps=1, inner_lr_w=0.025, inner_lr_alpha=0.03, w_keeps_support_steps=True)
    assert paper == MAMLSettings(inner_steps=1, inner_lr_w=0.025, inner_lr_alpha=0.003, w_keeps_support_steps=False)
    assert default.task_batch_size(8) == 8 and MAMLSettings(task_size=4).task_batch_size(8) == 4
    meta_fedpnas = build(tiny_cfg("search", ["algorithm=meta_fedpnas", "algorithm.maml.inner_steps=2"]).algorithm)
    assert meta_fedpnas.search.maml.inner_steps == 2


@pytest.mark.parametrize("override, message", [
    ("algorithm.maml.inner_steps=-1", "algorithm.maml.inner_steps"),
    ("algorithm.maml.task_size=0", "algorithm.maml.task_size"),
    ("algorithm.maml.inner_lr_alpha=0", "algorithm.maml.inner_lr_alpha"),
    ("algorithm.maml.w_keeps_support_steps=maybe", "algorithm.maml.w_keeps_support_steps"),
])
def test_bad_maml_settings_are_one_clear_error(tiny_cfg, override, message):
    from federated_nas.runs import check_config

    with pytest.raises(ConfigError, match=message):
        check_config(tiny_cfg("search", ["algorithm=fedmetanas", override]))
    from federated_nas.algorithms.core.maml import MAMLSettings  # the component checks what a caller gives it too

    key, value = override.removeprefix("algorithm.maml.").split("=")
    if key != "w_keeps_support_steps":
        with pytest.raises(ConfigError, match=message):
            MAMLSettings(**{key: float(value) if "lr" in key else int(value)})


@pytest.mark.end_to_end
def test_pruning_at_the_last_round_reports_the_accuracy_it_cost(pruned_at_the_last_round):
    """The final model is the pruned supernet; the same weights unpruned are evaluated beside it."""
    final = pruned_at_the_last_round
    assert final["pruned_ops"] > 0
    assert 0.0 <= final["global_test_acc_before_pruning"] <= 1.0
    assert final["supernet_params"] < count_parameters(SearchNetwork(1, 4, C=2, layers=2))


@pytest.mark.end_to_end
def test_a_run_resumed_after_its_last_round_personalizes_at_the_final_temperature(tiny_cfg, monkeypatch):
    """Before, the temperature was not saved: a crash during personalization resumed at the start value (1.0)."""
    from federated_nas import runs

    seen = []

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash during personalization")

    def record(algorithm, model, *args, **kwargs):
        seen.append(model.relaxation.temperature)
        return {}

    overrides = ["algorithm=fedmetanas", "logger=none", "personalize=true", "run_name=personal-crash"]
    monkeypatch.setattr(runs, "personalize_clients", crash)
    with pytest.raises(KeyboardInterrupt):
        run_search(tiny_cfg("search", overrides, run="first"))
    monkeypatch.setattr(runs, "personalize_clients", record)
    run_search(tiny_cfg("search", overrides + ["resume=true"], run="second"))
    assert seen == [pytest.approx(0.5)]  # the schedule's end, as the uninterrupted run had it
