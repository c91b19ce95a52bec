"""End to end through Hydra's compose API: search, train stage, resume, MLflow, bad input."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from federated_nas.errors import ConfigError, DataError
from federated_nas.federation.checkpoint import load_latest_checkpoint
from federated_nas.runs import run_search, run_train
from federated_nas.search_space.genotypes import Genotype
from helpers import assert_same_states, crash_then_resume


def final_state(run_dir) -> dict[str, torch.Tensor]:
    return load_latest_checkpoint(Path(run_dir) / "checkpoints")["model"]


def test_two_round_fednas_then_train_stage(tiny_cfg, tmp_path):
    # the last round is drawn whatever N; between rounds the curve is measured on 20 of the 40 test images
    cfg = tiny_cfg("search", ["plots_every=5", "federation.global_test_samples=20"])
    result = run_search(cfg)
    run_dir = Path(result["run_dir"])
    genotype = json.loads((run_dir / "genotype.json").read_text())
    assert set(genotype) == {"normal", "normal_concat", "reduce", "reduce_concat"}
    assert 0.0 <= result["global_test_acc"] <= 1.0
    for name in ("partition.json", "partition_counts.csv", "partition_heatmap.png"):
        assert (run_dir / "partition" / name).is_file()

    client = MlflowClient(cfg.logger.tracking_uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.run_name == "fednas-dir0.5-r2-s0"
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["synthetic-dir0.5"]  # the runs table's Dataset
    saved = json.loads((run_dir / "partition" / "partition.json").read_text())["clients"]
    profile = json.loads(run.inputs.dataset_inputs[0].dataset.profile)  # each client's split sizes
    assert profile["clients"] == 3
    for role in ("train", "val", "test"):
        assert profile[f"{role}_sizes"] == [len(entry[role]) for entry in saved]
    assert run.data.tags["algorithm"] == "fednas" and run.data.tags["partition"] == "dirichlet"
    assert run.data.params["federation.num_clients"] == "3" and run.data.params["search_space.C"] == "2"
    for key in run.data.params:  # only what a researcher varies; config.yaml holds the rest
        assert not key.startswith(("logger.", "paths.", "algorithm.search_space.")) and "_target_" not in key
        assert not run.data.params[key].startswith("/")
    curve = client.get_metric_history(run.info.run_id, "test/acc")
    assert [m.step for m in curve] == [1, 2]  # rounds count from 1, as in the log
    last = load_latest_checkpoint(run_dir / "checkpoints")["history"][-1]
    assert curve[-1].value == last["global_test_acc_sampled"]  # the curve's last point: the same 20 images
    metrics = run.data.metrics
    assert metrics["test/final_acc"] == result["global_test_acc"]  # the whole test set, a metric of its own
    assert metrics["test/best_acc"] == max(m.value for m in curve)
    assert metrics["test/best_round"] in (1, 2)
    assert metrics["arch/final_model_params"] == metrics["arch/derived_params"] == result["derived_params"]
    for metric in ("arch/alpha_entropy", "arch/skip_connect_count", "comm/bytes_sent", "clients/test_acc_std",
                   "time/round_seconds"):
        assert metric in metrics
    assert not [key for key in metrics if "/" not in key]  # every metric in a section of the UI
    genotype_line = repr(Genotype.from_dict(genotype))
    assert run.data.tags["genotype"] == genotype_line
    assert genotype_line in run.data.tags["mlflow.note.content"] and "%" in run.data.tags["mlflow.note.content"]
    assert "genotype.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/normal.png", "figures/reduce.png", "figures/alpha_normal.png", "figures/round_curves.png"} <= figures
    images = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
    for kind in ("normal", "reduce"):  # images/<key, / as ~>+step+<round>+...
        assert any(path.startswith(f"images/arch~{kind}_cell+step+2+") for path in images), images
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "architecture_history.json",
                                                      str(tmp_path))).read_text())
    assert [row[0] for row in table["data"]] == [1, 2] and table["data"][-1][1] == genotype_line
    history = load_latest_checkpoint(run_dir / "checkpoints")["history"]
    assert len(history[-1]["alpha_probabilities"]["normal"]) == 14  # kept per round for the heatmap

    trained = run_train(tiny_cfg("train", [f"search_run={run_dir}"]))
    trained_model = final_state(trained["run_dir"])
    assert not any(k.startswith("alpha") for k in trained_model)
    assert trained["params"] < sum(v.numel() for k, v in final_state(run_dir).items() if v.is_floating_point())

    by_run_id = run_train(tiny_cfg("train", [f"search_run={result['mlflow_run_id']}", "federation.rounds=1"],
                                   run="by_id"))
    assert by_run_id["params"] == trained["params"]  # the same genotype, found through MLflow
    for stage in (trained, by_run_id):  # the train runs name the search they continue
        assert client.get_run(stage["mlflow_run_id"]).data.tags["search_run_id"] == result["mlflow_run_id"]


def test_resumed_run_equals_uninterrupted_run(tiny_cfg, monkeypatch):
    overrides = ["logger=none", "federation.rounds=3", "federation.client_fraction=0.67"]
    uninterrupted = run_search(tiny_cfg("search", overrides, run="whole"))

    resumed = crash_then_resume(tiny_cfg, overrides, monkeypatch)
    assert resumed["run_dir"].endswith("first")
    assert_same_states(final_state(uninterrupted["run_dir"]), final_state(resumed["run_dir"]))


def test_resume_with_other_settings_is_refused_naming_each_key(tiny_cfg, monkeypatch):
    """The saved run's settings win silently no more: a changed learning rate is one line naming it, both values."""
    overrides = ["logger=none", "federation.rounds=2"]
    with pytest.raises(ConfigError, match=r"algorithm.lr \(saved 0.05, now 0.2\)") as caught:
        crash_then_resume(tiny_cfg, overrides, monkeypatch, ["algorithm.lr=0.2"])
    assert "\n" not in str(caught.value)


def test_resume_may_extend_the_rounds(tiny_cfg, monkeypatch):
    resumed = crash_then_resume(tiny_cfg, ["logger=none", "federation.rounds=2"], monkeypatch,
                                ["federation.rounds=3", "plots_every=null"])
    assert load_latest_checkpoint(Path(resumed["run_dir"]) / "checkpoints")["round"] == 3


@pytest.mark.parametrize("override, message", [
    ("partition.alpha=0", "partition.alpha"),
    ("federation.client_fraction=1.5", "federation.client_fraction"),
    ("federation.num_clients=1000", "federation.num_clients"),
    ("federation.rounds=0", "federation.rounds"),
])
def test_bad_config_is_one_clear_error(tiny_cfg, tmp_path, override, message):
    cfg = tiny_cfg("search", ["logger=none", override])
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        run_search(cfg)
    assert not Path(cfg.paths.output_dir).exists()  # nothing half-written


@pytest.mark.parametrize("uri, message", [
    ("http://127.0.0.1:9", "tracking server unreachable"),  # nothing listens on the discard port
    ("foo://bar", "MLflow has no tracking store for 'foo'://"),  # a scheme MLflow does not know
])
def test_a_bad_tracking_uri_fails_in_seconds(tiny_cfg, uri, message):
    cfg = tiny_cfg("search", [f"logger.tracking_uri={uri}"])
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        run_search(cfg)
    assert time.perf_counter() - started < 10
    assert not Path(cfg.paths.output_dir).exists()


def test_a_failure_recording_the_start_fails_the_run_and_its_mlflow_run(tiny_cfg, monkeypatch):
    """The start is recorded on the tracker's thread (runs.start_tracking): its error is the run's, raised
    once, and the MLflow run it opened ends FAILED rather than left running."""
    from federated_nas.tracking import plots

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "plot_partition_heatmap", disk_full)
    cfg = tiny_cfg("search", ["federation.rounds=1"])
    with pytest.raises(OSError, match="No space left on device"):
        run_search(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name(cfg.task_name).experiment_id])
    assert run.info.status == "FAILED"


def test_genotype_model_without_a_genotype_says_so(tiny_cfg):
    cfg = tiny_cfg("search", ["logger=none", "algorithm=fedavg", "model=genotype"])
    with pytest.raises(ConfigError, match="model.genotype"):
        run_search(cfg)
    assert not Path(cfg.paths.output_dir).exists()


def test_lightning_combined_loader_raises_no_deprecation_warning():
    """The torch/Lightning pytree skew is fixed at its call site (federated_nas.compat), not filtered."""
    from torch.utils.data import TensorDataset

    from federated_nas.compat import use_torch_leaf_factory_in_lightning
    from federated_nas.data.loaders import paired_loader

    use_torch_leaf_factory_in_lightning()

    data = TensorDataset(torch.randn(8, 1, 4, 4), torch.arange(8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches = list(paired_loader(data, data, ("train", "val"), 4, seed=0))
    assert len(batches) == 2


def test_unknown_dataset_and_missing_search_run(tiny_cfg, tmp_path):
    cfg = tiny_cfg("search", ["logger=none", "dataset=mnist", "dataset.name=imagenet"])
    with pytest.raises(ConfigError, match="imagenet"):
        run_search(cfg)
    with pytest.raises(ConfigError, match="search_run"):
        run_train(tiny_cfg("train", ["logger=none"]))
    with pytest.raises(DataError, match="no genotype.json"):
        run_train(tiny_cfg("train", ["logger=none", f"search_run={tmp_path}"]))


def test_resume_without_a_run_says_so(tiny_cfg):
    with pytest.raises(ConfigError, match="no unfinished run"):
        run_search(tiny_cfg("search", ["logger=none", "resume=true"]))


def test_round_progress_bar_shows_rounds_clients_and_accuracy(tiny_cfg, monkeypatch, capsys):
    from federated_nas.federation import server

    real_init = server.FederatedRun.__init__
    monkeypatch.setattr(server.FederatedRun, "__init__",
                        lambda self, *args, **kwargs: real_init(self, *args, **{**kwargs, "progress": True}))
    run_search(tiny_cfg("search", ["logger=none"]))
    shown = capsys.readouterr().err
    assert "rounds" in shown and "2/2" in shown
    assert "clients 3/3" in shown and "acc " in shown and "s/round" in shown


def test_the_final_model_is_an_mlflow_model_and_the_run_has_system_metrics(tiny_cfg, monkeypatch):
    """The shipped model loads back with mlflow.pytorch and equals the run's last checkpoint; a run shorter than
    the system metrics' interval still ends with one system/ sample."""
    import mlflow
    import mlflow.pytorch

    from federated_nas.tracking import mlflow_tracker

    monkeypatch.setattr(mlflow_tracker, "SYSTEM_METRICS_SECONDS", 3600)
    cfg = tiny_cfg("search", [])
    result = run_search(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    logged = client.get_logged_model(result["mlflow_model_id"])
    assert logged.name == "final_model" and logged.source_run_id == result["mlflow_run_id"]
    assert {m.key for m in logged.metrics} == {"test/final_acc", "arch/final_model_params"}
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    model = mlflow.pytorch.load_model(f"models:/{result['mlflow_model_id']}")
    assert_same_states(model.state_dict(), final_state(result["run_dir"]))
    metrics = client.get_run(result["mlflow_run_id"]).data.metrics
    assert any(key.startswith("system/cpu_utilization") for key in metrics)


@pytest.mark.parametrize("batch_size", [4, 5, 50])
def test_evaluating_prefixes_in_one_pass_equals_evaluating_each(batch_size):
    """The last round's sampled and full evaluations share one pass; each prefix's numbers are those of its own
    evaluation: exactly where every prefix ends on a batch boundary (batches of 4), to float rounding of the
    loss where one ends inside a batch (5: 12 = 2 x 5 + 2), the accuracy exactly either way."""
    from torch.utils.data import TensorDataset

    from federated_nas.federation.evaluation import evaluate, evaluate_prefixes

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    data = TensorDataset(torch.randn(23, 1, 4, 4), torch.randint(0, 3, (23,)))
    got = evaluate_prefixes(model, data, [12, 23, 8, 40, 0], batch_size)
    expected = [evaluate(model, data, batch_size, limit=n) for n in (12, 23, 8, 23)] + [(0.0, 0.0)]
    if batch_size == 4:
        assert got == expected  # the same batches and sums
    assert [acc for acc, _ in got] == [acc for acc, _ in expected]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in expected], rel=1e-6)
    assert got[1] != got[0]
