"""Local adaptation after federated training: FedAvg fine-tuning, Per-FedAvg, personalized FedNAS,
the comparison experiment's configs and the personalization table."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.utils.data import TensorDataset

from federated_nas.algorithms.fedavg import FedAvg
from federated_nas.algorithms.fednas import FedNAS
from federated_nas.algorithms.fedprox import FedProx
from federated_nas.algorithms.perfedavg import FirstOrderMetaStep, PerFedAvg
from federated_nas.algorithms.personal import finetune
from federated_nas.data.federated_data import ClientData
from federated_nas.errors import ConfigError
from federated_nas.federation.checkpoint import load_latest_checkpoint
from federated_nas.runs import build, run_search
from federated_nas.search_space.supernet import SearchNetwork
from conftest import CONFIG_DIR, assert_same_states, compose_config
from test_tracking import assert_real_image, load_script
from test_update_rules import SGD, grads, run_one_step, tiny_batch

SMALL_CNN = ["model=cnn", "model.channels=[4,8]", "model.hidden=16"]
SWEPT = ["fedavg", "fedprox", "ditto", "perfedavg", "fedrep", "fedbabu", "fednas", "fedmetanas"]


def linear_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def client_of(train: TensorDataset, val: TensorDataset | None = None) -> ClientData:
    empty = TensorDataset(train.tensors[0][:0], train.tensors[1][:0])
    return ClientData(0, train, val if val is not None else empty, empty)


def dataset(seed: int) -> TensorDataset:
    return TensorDataset(*tiny_batch(seed))


# --- known answers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha,beta", [(0.1, 0.2), (0.5, 0.05)])
def test_perfedavg_first_order_step(alpha, beta):
    """temp = w - alpha grad L(w; D1);  w <- w - beta grad L(temp; D2)."""
    model = linear_model()
    d1, d2 = tiny_batch(1), tiny_batch(2)
    temp = copy.deepcopy(model)
    inner_grad = grads(temp, d1, list(temp.parameters()))
    with torch.no_grad():
        for param, grad in zip(temp.parameters(), inner_grad):
            param.sub_(alpha * grad)
    meta_grad = grads(temp, d2, list(temp.parameters()))
    start = [p.detach().clone() for p in model.parameters()]
    run_one_step(FirstOrderMetaStep(model, SGD, lr=beta, inner_lr=alpha, grad_clip=None), {"inner": d1, "outer": d2})
    for new, old, grad in zip(model.parameters(), start, meta_grad):
        torch.testing.assert_close(new, old - beta * grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm,steps,lr", [
    (FedAvg(lambda **_: linear_model(), SGD, adapt_steps=3, adapt_lr=0.1), 3, 0.1),
    (FedProx(lambda **_: linear_model(), SGD), 5, 0.025),  # FedAvg's defaults, inherited
    (PerFedAvg(lambda **_: linear_model(), SGD, inner_lr=0.2), 1, 0.2),  # one step at alpha
], ids=["fedavg", "fedprox", "perfedavg"])
def test_fixed_network_adaptation_is_finetune(algorithm, steps, lr):
    model, client = linear_model(), client_of(dataset(3))
    original = copy.deepcopy(model.state_dict())
    adapted = algorithm.adapt(model, client, 4, 7, {})
    assert_same_states(adapted.state_dict(), finetune(model, client, 4, 7, steps, lr).state_dict())
    assert_same_states(model.state_dict(), original)
    assert not adapted.training and not torch.equal(adapted[1].weight, model[1].weight)


@pytest.mark.parametrize("val_lambda", [0.0, 1.5])
def test_fednas_adapt_step_is_the_milenas_update_with_sgd(val_lambda):
    """One step on the client's whole train and val splits (one batch each):
    w <- w - lr_w g_w(L_tr);  alpha <- alpha - lr_a (g_a(L_tr) + lambda g_a(L_val))."""
    torch.manual_seed(0)
    model = SearchNetwork(1, 3, C=2, layers=1)
    train, val = dataset(1), dataset(2)
    lr_w, lr_a = 0.1, 0.3
    algorithm = FedNAS(SearchNetwork, SGD, SGD, val_lambda=val_lambda, grad_clip=None, adapt_steps=1,
                       adapt_lr_w=lr_w, adapt_lr_alpha=lr_a)
    reference = copy.deepcopy(model)
    weights, alphas = reference.weight_parameters(), reference.arch_parameters()
    g_w = grads(reference, train.tensors, weights)
    g_a_tr, g_a_val = grads(reference, train.tensors, alphas), grads(reference, val.tensors, alphas)
    original = copy.deepcopy(model.state_dict())
    adapted = algorithm.adapt(model, client_of(train, val), batch_size=len(train), seed=3, personal={})
    for new, old, g in zip(adapted.weight_parameters(), weights, g_w):
        torch.testing.assert_close(new, old - lr_w * g, rtol=1e-4, atol=1e-6)
    for new, old, g_tr, g_val in zip(adapted.arch_parameters(), alphas, g_a_tr, g_a_val):
        torch.testing.assert_close(new, old - lr_a * (g_tr + val_lambda * g_val), rtol=1e-4, atol=1e-6)
    assert_same_states(model.state_dict(), original)
    assert isinstance(adapted, SearchNetwork) and not adapted.training


def test_fednas_adapt_cycles_its_batches_and_zero_steps_is_a_copy():
    torch.manual_seed(0)
    model = SearchNetwork(1, 3, C=2, layers=1)
    client = client_of(dataset(1), dataset(2))  # 6 samples each: one batch pair of 6
    zero, one, three = (FedNAS(SearchNetwork, SGD, SGD, adapt_steps=steps) for steps in (0, 1, 3))
    assert_same_states(zero.adapt(model, client, 6, 0, {}).state_dict(), model.state_dict())
    stepwise = model
    for _ in range(3):  # plain SGD keeps no state: three 1-step adaptations are one 3-step adaptation
        stepwise = one.adapt(stepwise, client, 6, 0, {})
    for new, expected in zip(three.adapt(model, client, 6, 0, {}).parameters(), stepwise.parameters()):
        torch.testing.assert_close(new, expected)
    assert any(not torch.equal(new, old) for new, old in zip(stepwise.arch_parameters(), model.arch_parameters()))


@pytest.mark.parametrize("overrides,key", [
    (["algorithm=perfedavg", "model=cnn", "algorithm.inner_lr=0"], "algorithm.inner_lr"),
    (["algorithm=fednas", "algorithm.adapt_steps=-1"], "algorithm.adapt_steps"),
])
def test_bad_adaptation_settings_are_one_clear_error(tiny_cfg, overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        build(tiny_cfg("search", overrides).algorithm)


BUDGETS = {  # what each method's personalization costs a client, as the comparison tables show it
    "fedavg": "5 SGD steps after the rounds", "fedprox": "5 SGD steps after the rounds",
    "perfedavg": "1 SGD step after the rounds", "fedbabu": "10 SGD steps after the rounds",
    "fednas": "5 MiLeNAS steps after the rounds", "feddsnas": "5 MiLeNAS steps after the rounds",
    "fedmetanas": "5 MAML inner steps after the rounds",
    "ditto": "personal model: every local step of the rounds a client takes part in",
    "fedrep": "personal head: 10 steps in each round a client takes part in (a client never sampled: "
              "10 SGD steps after the rounds)",
    "fedpnas": "personal cells: every local step of the rounds a client takes part in (a client never sampled: "
               "5 SGD steps after the rounds)",
    "perfedrlnas": "personal policy: one REINFORCE step per round a client takes part in",
    "fedrlnas": None, "feddarts": None,
}


@pytest.mark.parametrize("name,budget", sorted(BUDGETS.items()))
def test_each_personalizing_method_states_its_budget(tiny_cfg, name, budget):
    from federated_nas.algorithms.base import FederatedAlgorithm

    overrides = [f"algorithm={name}", *(SMALL_CNN if name in SWEPT[:6] else [])]
    algorithm = build(tiny_cfg("search", overrides).algorithm)
    assert algorithm.personalization_budget() == budget
    assert (budget is None) == (type(algorithm).adapt is FederatedAlgorithm.adapt)


# --- tiny runs -----------------------------------------------------------------------------------

def test_two_round_perfedavg_run_with_personalization(tiny_cfg):
    final = run_search(tiny_cfg("search", ["algorithm=perfedavg", *SMALL_CNN, "personalize=true", "logger=none"]))
    assert 0.0 <= final["personalized_acc_after_mean"] <= 1.0
    saved = json.loads((Path(final["run_dir"]) / "personalized" / "client_accuracy.json").read_text())
    assert saved["clients"] == [0, 1, 2] and len(saved["before"]) == len(saved["after"]) == 3
    assert final["personalized_acc_after_mean"] == pytest.approx(sum(saved["after"]) / 3)


@pytest.fixture(scope="module")
def personalized_store(tmp_path_factory):
    """A real 2-round personalized FedNAS run logged to MLflow, plus two hand-made runs in the same
    experiment: a FedMetaNAS run with a round logged twice (as after a resume), and a FedAvg run that
    did not personalize."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("personal")
    cfg = compose_config("search", tmp_path, ["algorithm=fednas", "personalize=true", "algorithm.adapt_steps=2"])
    final = run_search(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    experiment_id = client.get_experiment_by_name("search").experiment_id
    made = [("fedmetanas-made", "fedmetanas", "supernet_params",
             {"clients/personalized_acc_after_mean": 0.9, "clients/personalized_acc_after_std": 0.05,
              "arch/supernet_params": 2000, "arch/derived_params": 500, "arch/final_model_params": 2000}),
            ("fedavg-made", "fedavg", "params", {"clients/test_acc_mean": 0.4, "clients/test_acc_std": 0.1,
                                                 "arch/params": 1234, "arch/final_model_params": 1234})]
    for name, algorithm, final_model, metrics in made:
        run_id = client.create_run(experiment_id, run_name=name).info.run_id
        for key, value in {"algorithm": algorithm, "dataset": "synthetic", "partition": "label_skew",
                           "partition.classes_per_client": "4", "seed": "1", "final_model": final_model}.items():
            client.set_tag(run_id, key, value)
        if algorithm == "fedmetanas":
            client.set_tag(run_id, "personalization", "5 MAML inner steps after the rounds")
        for key, value in {**metrics, "test/final_acc": 0.5, "time/elapsed_seconds": 65.0}.items():
            client.log_metric(run_id, key, value)
        for step, sent, received in ((1, 100, 50), (2, 200, 60), (2, 200, 60)):  # round 2 logged again
            client.log_metric(run_id, "comm/bytes_sent", sent, step=step)
            client.log_metric(run_id, "comm/bytes_received", received, step=step)
        if algorithm == "fedmetanas":
            path = tmp_path / name / "client_accuracy.json"
            path.parent.mkdir()
            path.write_text(json.dumps({"before": [0.5, 0.7], "after": [0.85, 0.95], "clients": [0, 1]}))
            client.log_artifact(run_id, str(path), "personalized")
        client.set_terminated(run_id)
    return cfg.logger.tracking_uri, final


def test_two_round_fednas_run_saves_each_clients_genotype_and_accuracy(personalized_store):
    from mlflow.tracking import MlflowClient

    uri, final = personalized_store
    assert 0.0 <= final["personalized_acc_after_mean"] <= 1.0
    personalized = Path(final["run_dir"]) / "personalized"
    assert sorted(p.name for p in personalized.glob("client_?.json")) == ["client_0.json", "client_1.json",
                                                                           "client_2.json"]
    saved = json.loads((personalized / "client_accuracy.json").read_text())
    assert saved["clients"] == [0, 1, 2]
    assert final["personalized_acc_before_mean"] == pytest.approx(sum(saved["before"]) / 3)
    logged = {info.path for info in MlflowClient(uri).list_artifacts(final["mlflow_run_id"], "personalized")}
    assert {"personalized/client_accuracy.json", "personalized/client_0.json"} <= logged


def test_personalization_table_and_histograms(personalized_store, tmp_path):
    from federated_nas.tracking.compare import compare_personalization, collect_personal_rows

    uri, final = personalized_store
    rows = {row.algorithm: row for row in collect_personal_rows(uri, "search")}
    history = load_latest_checkpoint(Path(final["run_dir"]) / "checkpoints")["history"]
    fednas = rows["fednas"]
    assert fednas.bytes_communicated == sum(h["bytes_sent"] + h["bytes_received"] for h in history)
    assert (fednas.params_metric, fednas.params) == ("derived_params", final["derived_params"])
    assert fednas.local_acc_mean == pytest.approx(final["personalized_acc_after_mean"])
    assert fednas.budget == "2 MiLeNAS steps after the rounds"  # algorithm.adapt_steps=2, from the run's tag
    assert len(fednas.client_accuracy["after"]) == 3
    assert rows["fedmetanas"].params_metric == "supernet_params" and rows["fedmetanas"].bytes_communicated == 410
    assert rows["fedavg"].client_accuracy is None and not rows["fedavg"].personalized

    table_path, image_path = compare_personalization(uri, "search", tmp_path / "out", "tags.seed = '1'")
    lines = [line for line in table_path.read_text().splitlines() if line.startswith("| fed")]
    assert lines == [
        "| fedmetanas | synthetic, label_skew(classes_per_client=4) | 1 | 50.0 | 90.0 ± 5.0 "
        "| 5 MAML inner steps after the rounds | 2.0k (supernet) "
        "| 1m 05s | 410 B | fedmetanas-made (" + rows["fedmetanas"].short_id + ") |",
        "| fedavg | synthetic, label_skew(classes_per_client=4) | 1 | 50.0 | 40.0 ± 10.0 (global model) "
        "| - | 1.2k (network) | 1m 05s | 410 B | fedavg-made (" + rows["fedavg"].short_id + ") |",
    ]
    assert_real_image(image_path)


def test_compare_script_personalization_kind(personalized_store, tmp_path, capsys):
    uri, _ = personalized_store
    load_script("compare_runs").main(["--tracking-uri", uri, "--kind", "personalization", "--out", str(tmp_path)])
    assert capsys.readouterr().out.split() == [str(tmp_path / "personalization.md"),
                                               str(tmp_path / "personalization.png")]
    assert "| fednas |" in (tmp_path / "personalization.md").read_text()


# --- the comparison experiment -----------------------------------------------------------------------

@pytest.mark.parametrize("experiment,partition", [
    ("compare_cpu", {"name": "dirichlet", "alpha": 0.1}),
    ("compare_cpu_label_skew", {"name": "label_skew", "classes_per_client": 4}),
])
def test_comparison_experiments_compose(experiment, partition):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("search", overrides=[f"experiment={experiment}"], return_hydra_config=True)
        swept = {} if experiment != "compare_cpu" else {  # the variant shares compare_cpu_common's methods
            name: compose("search", overrides=[f"experiment={experiment}", f"algorithm={name}"]).algorithm
            for name in SWEPT}
    params = cfg.hydra.sweeper.params
    assert params.algorithm.split(",") == SWEPT and str(params.seed) == "0"
    assert (cfg.task_name, cfg.dataset.name, cfg.personalize, cfg.plots_every) == ("compare_cpu", "fashion_mnist",
                                                                                    True, None)
    assert {k: v for k, v in cfg.partition.items() if not k.startswith("_") and k not in ("min_client_size", "label")
            } == partition
    assert cfg.model._target_.endswith("small_cnn")
    fed = cfg.federation
    assert (fed.num_clients, fed.client_fraction, fed.local_batches, fed.batch_size, fed.global_test_samples) == (
        10, 0.5, 10, 32, 2000)
    for name, node in swept.items():
        assert build(node).name == name  # every swept method builds with the experiment's settings


def test_personal_nas_experiment_is_table_5_at_the_compare_budget():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("search", overrides=["experiment=personal_nas_cpu"], return_hydra_config=True)
        methods = cfg.hydra.sweeper.params.algorithm.split(",")
        nodes = {name: compose("search", overrides=["experiment=personal_nas_cpu", f"algorithm={name}"]).algorithm
                 for name in methods}
    assert methods == ["fednas", "fedmetanas", "fedpnas", "meta_fedpnas", "perfedrlnas", "meta_perfedrlnas"]
    assert (cfg.task_name, cfg.personalize, cfg.partition.alpha, cfg.federation.rounds) == ("compare_cpu", True, 0.1, 8)
    for name, node in nodes.items():
        assert build(node).name == name
