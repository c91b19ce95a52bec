"""Local adaptation after federated training: fine-tuning (how FedAvg, FedProx and Per-FedAvg adapt), each
method's personalization budget, a personalized FedNAS run and the personalization table, the comparison
experiments' configs. Each method's own adaptation step is tested in tests/methods/."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from federated_nas.algorithms.baselines.fedavg import FedAvg
from federated_nas.algorithms.baselines.fedprox import FedProx
from federated_nas.algorithms.baselines.perfedavg import PerFedAvg
from federated_nas.algorithms.core.personal import cycled, finetune
from federated_nas.data.loaders import batch_loader
from federated_nas.federation.checkpoint import load_latest_checkpoint
from federated_nas.models.heads import head_parameters
from federated_nas.runs import build, run_search
from helpers import (CONFIG_DIR, SGD, SMALL_CNN, adapt_task, assert_real_image, assert_same_states, client_of,
                     client_with, compose_config, headed_model, linear_model, load_script, sgd_by_hand, tiny_split)

SWEPT = ["fedavg", "fedprox", "ditto", "perfedavg", "fedrep", "fedbabu", "fednas", "fedmetanas"]


# --- known answers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm,steps,lr", [
    (FedAvg(lambda **_: linear_model(), SGD, adapt_steps=3, adapt_lr=0.1), 3, 0.1),
    (FedProx(lambda **_: linear_model(), SGD), 5, 0.025),  # FedAvg's defaults, inherited
    (PerFedAvg(lambda **_: linear_model(), SGD, inner_lr=0.2), 1, 0.2),  # one step at alpha
], ids=["fedavg", "fedprox", "perfedavg"])
def test_fixed_network_adaptation_is_finetune(algorithm, steps, lr):
    model, client = linear_model(), client_of(tiny_split(3))
    original = copy.deepcopy(model.state_dict())
    adapted = algorithm.adapt(model, adapt_task(client, 4, 7))
    assert_same_states(adapted.state_dict(), finetune(model, adapt_task(client, 4, 7), steps, lr).state_dict())
    assert_same_states(model.state_dict(), original)
    assert not adapted.training and not torch.equal(adapted[1].weight, model[1].weight)


@pytest.mark.parametrize("trained", ["all", "head"])
def test_finetune_is_plain_sgd_on_cycled_client_batches(trained):
    model, client, lr = headed_model(), client_with(10), 0.1
    original = copy.deepcopy(model.state_dict())
    select = head_parameters if trained == "head" else None
    adapted = finetune(model, adapt_task(client, 4, 7), steps=3, lr=lr, parameters=select)
    loader = batch_loader(client.train, 4, shuffle=True, seed=7)  # 2 batches an epoch: the third step cycles
    reference = copy.deepcopy(model)
    for batch in (list(loader) + list(loader))[:3]:
        sgd_by_hand(reference, batch, select(reference) if select else list(reference.parameters()), lr)
    assert_same_states(model.state_dict(), original)
    for name, value in adapted.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[name], msg=name)
    assert not adapted.training
    assert torch.equal(adapted[1].weight, model[1].weight) == (trained == "head")


def test_cycled_batches():
    assert list(cycled([1, 2], 5)) == [1, 2, 1, 2, 1]
    assert list(cycled([], 3)) == []


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
    from federated_nas.algorithms.core.base import FederatedAlgorithm

    overrides = [f"algorithm={name}", *(SMALL_CNN if name in SWEPT[:6] else [])]
    algorithm = build(tiny_cfg("search", overrides).algorithm)
    assert algorithm.personalization_budget() == budget
    assert (budget is None) == (type(algorithm).adapt is FederatedAlgorithm.adapt)


# --- a personalized FedNAS run and the comparison table ------------------------------------------------

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
