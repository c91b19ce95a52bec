"""Figures and the run comparison: cell drawings, alpha and round plots, the MLflow table and grid."""

from __future__ import annotations

import threading

import matplotlib.image
import numpy as np
import pytest

from federated_nas.errors import ConfigError, DataError
from federated_nas.search_space.genotypes import Genotype
from federated_nas.search_space.operations import PRIMITIVES
from federated_nas.tracking.cell_drawing import cell_graph, draw_cell, draw_genotype
from federated_nas.tracking.plots import (
    plot_alpha_evolution,
    plot_client_histogram,
    plot_partition_heatmap,
    plot_round_curves,
)
from helpers import assert_real_image, load_script


# DARTS V2's cells (Liu et al., 2019): two edges per node, four nodes.
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5],
)
# A pruned FedMetaNAS-style cell: one edge per node, nodes fed by the cell inputs only.
PRUNED = ([("sep_conv_5x5", 1), ("skip_connect", 0), ("dil_conv_5x5", 1), ("avg_pool_3x3", 0)], [2, 3, 4, 5])
# Node 2 only feeds node 3 and is not concatenated; node 3 has both edges from node 2.
OUTSIDE_CONCAT = ([("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("dil_conv_3x3", 2), ("none", 2),
                   ("sep_conv_5x5", 3), ("skip_connect", 1)], [3, 4])


@pytest.mark.parametrize("edges, concat", [(DARTS_V2.normal, DARTS_V2.normal_concat), PRUNED, OUTSIDE_CONCAT],
                         ids=["darts_v2", "one_edge_per_node", "node_outside_concat"])
def test_draw_cell_writes_an_image(tmp_path, edges, concat):
    assert_real_image(draw_cell(edges, concat, tmp_path / "cell.png", title="cell"))


def test_cell_graph_infers_nodes_from_concat():
    graph = cell_graph(*OUTSIDE_CONCAT)
    assert graph.steps == 3
    assert [edge.target for edge in graph.edges] == [2, 2, 3, 3, 4, 4]
    assert len(cell_graph(*PRUNED).edges) == cell_graph(*PRUNED).steps == 4


def test_draw_genotype_names_files_by_stem(tmp_path):
    paths = draw_genotype(DARTS_V2, tmp_path, stem="round_005")
    assert [p.name for p in paths] == ["round_005_normal.png", "round_005_reduce.png"]
    assert draw_genotype(DARTS_V2, tmp_path, stem="round_005_") == paths  # a trailing underscore is not doubled
    for path in paths:
        assert_real_image(path)


@pytest.mark.parametrize("edges, concat, message", [
    ([("sep_conv_3x3", 0), ("skip_connect", 2)], [2], "feeds node 2: its input must be one of nodes 0..1"),
    ([("sep_conv_3x3", 0), ("skip_connect", 1), ("none", 0)], [2, 3], "not a positive multiple"),
    ([("sep_conv_3x3", 0)], [], "empty concat"),
])
def test_invalid_cell_is_one_clear_error(tmp_path, edges, concat, message):
    with pytest.raises(DataError, match=message) as raised:
        draw_cell(edges, concat, tmp_path / "bad.png")
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "bad.png").exists()


def test_alpha_evolution_one_panel_per_op(tmp_path):
    logits = np.random.default_rng(0).normal(size=(5, 14, len(PRIMITIVES)))
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert_real_image(plot_alpha_evolution(probabilities, PRIMITIVES, tmp_path / "alpha.png", "normal"))
    with pytest.raises(DataError, match=r"\[rounds, edges, ops\].*\(5, 14\)"):
        plot_alpha_evolution(probabilities[:, :, 0], PRIMITIVES, tmp_path / "bad.png")
    with pytest.raises(DataError, match="8 primitives"):
        plot_alpha_evolution(probabilities[:, :, :3], PRIMITIVES, tmp_path / "bad.png")


def test_round_curves_with_and_without_alpha(tmp_path):
    search = [{"round": r, "global_test_acc": 0.5 + 0.1 * r, "global_test_acc_discrete": 0.45 + 0.1 * r,
               "client_test_acc_mean": 0.5 + 0.05 * r, "client_test_acc_std": 0.05,
               "alpha_entropy_normalized": 1.0 - 0.1 * r, "skip_connect_count": r % 3} for r in range(4)]
    del search[1]["global_test_acc"], search[2]["client_test_acc_std"]  # sparse evaluation rounds
    assert_real_image(plot_round_curves(search, tmp_path / "search.png", "fednas-dir0.5-r4-s0 · round 4"))
    fixed = [{"round": r, "global_test_acc": 0.6 + 0.05 * r, "genotype": "{}"} for r in range(3)]
    assert_real_image(plot_round_curves(fixed, tmp_path / "fixed.png"))


def test_client_histogram_and_partition_heatmap(tmp_path):
    assert_real_image(plot_client_histogram([0.61, 0.7, 0.72, 0.8, 0.93], tmp_path / "clients.png"))
    with pytest.raises(DataError, match="client accuracies"):
        plot_client_histogram([], tmp_path / "empty.png")
    assert_real_image(plot_partition_heatmap(np.arange(12).reshape(4, 3), tmp_path / "partition.png"))
    # 1,000 clients: the canvas stays bounded (it once grew half an inch per client, +1 GB of memory)
    wide = plot_partition_heatmap(np.ones((10, 1000), dtype=int), tmp_path / "wide.png")
    width, height = matplotlib.image.imread(wide).shape[1::-1]
    assert width <= 16 * 120 and height <= 16 * 120


# --- comparing the runs of an MLflow experiment -------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A SQLite store with two finished search runs and one run that never evaluated (one per module:
    creating the store's schema is the slowest step of these tests)."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("search", artifact_location=str(tmp_path / "artifacts"))
    pruned = Genotype(normal=PRUNED[0], normal_concat=PRUNED[1], reduce=PRUNED[0], reduce_concat=PRUNED[1])
    runs = [("fednas-weaker", "fednas", 0.71, DARTS_V2), ("fedmetanas-better", "fedmetanas", 0.84, pruned),
            ("fedavg-unevaluated", "fedavg", None, None)]
    for name, algorithm, accuracy, genotype in runs:
        run_id = client.create_run(experiment_id, run_name=name).info.run_id
        tags = {"algorithm": algorithm, "dataset": "fashion_mnist", "partition": "dirichlet",
                "partition.alpha": "0.5", "num_clients": "10", "seed": "0"}
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        if accuracy is not None:
            for step, value in enumerate((accuracy - 0.2, accuracy - 0.01), start=1):  # the round curve
                client.log_metric(run_id, "test/acc", value, step=step)
            client.log_metric(run_id, "test/final_acc", accuracy, step=2)  # the table shows the whole test set's
            client.log_metric(run_id, "clients/test_acc_mean", accuracy - 0.02)
            client.log_metric(run_id, "clients/test_acc_std", 0.031)
            client.log_metric(run_id, "arch/final_model_params", 123_456)
            client.log_metric(run_id, "time/elapsed_seconds", 754.0)
        if genotype is not None:
            client.log_artifact(run_id, str(genotype.save(tmp_path / name / "genotype.json")))
        client.set_terminated(run_id)
    return uri


def test_compare_table_sorted_by_accuracy_and_cell_grid(mlflow_store, tmp_path):
    from federated_nas.tracking.compare import collect_rows, compare_runs, write_cell_grid, write_table

    rows = collect_rows(mlflow_store, "search", "")
    assert [row.name for row in rows] == ["fedmetanas-better", "fednas-weaker", "fedavg-unevaluated"]
    assert rows[0].genotype is not None and rows[2].genotype is None
    table = write_table(rows, tmp_path / "out" / "comparison.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| fed")]
    assert [line.split(" | ")[0] for line in lines] == ["| fedmetanas-better", "| fednas-weaker",
                                                        "| fedavg-unevaluated"]
    assert "| 84.0 | 82.0 ± 3.1 | 123.5k | 12m 34s |" in lines[0]
    assert "dirichlet(alpha=0.5)" in lines[0]
    assert_real_image(write_cell_grid(rows, tmp_path / "out" / "comparison.png"))

    table_path, image_path = compare_runs(mlflow_store, "search", tmp_path / "filtered",
                                          "tags.algorithm = 'fednas'")
    assert "fednas-weaker" in table_path.read_text() and "fedmetanas" not in table_path.read_text()
    assert_real_image(image_path)


def test_compare_grid_without_genotypes_says_so(mlflow_store, tmp_path):
    from federated_nas.tracking.compare import collect_rows, write_cell_grid

    rows = collect_rows(mlflow_store, "search", "tags.algorithm = 'fedavg'")
    assert len(rows) == 1
    assert_real_image(write_cell_grid(rows, tmp_path / "none.png"))


def test_compare_unknown_experiment_lists_known_ones(mlflow_store, tmp_path):
    from federated_nas.tracking.compare import collect_rows

    with pytest.raises(DataError, match="no MLflow experiment named 'serch'.*known experiments: .*search"):
        collect_rows(mlflow_store, "serch")
    with pytest.raises(DataError, match="no MLflow store at"):
        collect_rows(f"sqlite:///{tmp_path}/missing.db", "search")


def test_compare_script(mlflow_store, tmp_path, capsys):
    script = load_script("compare_runs")
    script.main(["--tracking-uri", mlflow_store, "--filter", "", "--out", str(tmp_path / "out")])
    assert capsys.readouterr().out.split() == [str(tmp_path / "out" / "comparison.md"),
                                               str(tmp_path / "out" / "comparison.png")]
    with pytest.raises(SystemExit) as exited:
        script.main(["--tracking-uri", mlflow_store, "--experiment", "nope", "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: no MLflow experiment named 'nope'") and error.count("\n") == 1


CREATE_RUN = """
import sys, time
from lightning.pytorch.loggers import MLFlowLogger
from federated_nas.tracking.mlflow_tracker import RunTracker, store_lock
uri, artifacts, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
with store_lock(uri):
    RunTracker(MLFlowLogger(experiment_name="search", tracking_uri=uri, artifact_location=artifacts))
print("created")
"""


def test_sweep_jobs_starting_together_share_one_new_store(tmp_path):
    """Unlocked, two of three jobs died in MLflow's schema migration ('duplicate column name: step')."""
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    start = time.time() + 8  # all three past their imports, then at once
    jobs = [subprocess.Popen([sys.executable, "-c", CREATE_RUN, uri, str(tmp_path / "artifacts"), str(start)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [job.communicate(timeout=120) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0], [err[-300:] for _, err in outputs]
    experiment = MlflowClient(uri).get_experiment_by_name("search")
    assert len(MlflowClient(uri).search_runs([experiment.experiment_id])) == 3


# --- the run record MLflow gets, and where the UI shows it --------------------------------------------

def test_metrics_go_to_ui_sections_and_the_last_round_keeps_its_curve_point():
    from federated_nas.tracking.run_record import SECTIONS, mlflow_metrics

    round_metrics = {"global_test_acc": 0.5, "global_test_loss": 1.2, "client_test_acc_mean": 0.4, "bytes_sent": 10,
                     "round_seconds": 2.0, "alpha_entropy": 1.9, "final_model_params": 1234, "clients": 3,
                     "best_global_test_acc": 0.5, "best_round": 4, "failures": {}, "genotype": "{}"}
    named = mlflow_metrics(round_metrics)
    assert named == {"test/acc": 0.5, "test/loss": 1.2, "clients/test_acc_mean": 0.4, "comm/bytes_sent": 10.0,
                     "time/round_seconds": 2.0, "arch/alpha_entropy": 1.9, "arch/final_model_params": 1234.0,
                     "clients/sampled": 3.0, "test/best_acc": 0.5, "test/best_round": 4.0}
    assert {name.split("/")[0] for name in named} <= set(SECTIONS)

    last = {"global_test_acc": 0.81, "global_test_acc_sampled": 0.78, "global_test_loss": 0.5,
            "global_test_loss_sampled": 0.6, "global_test_acc_discrete": 0.8}
    assert mlflow_metrics(last, final_round=True) == {
        "test/final_acc": 0.81, "test/acc": 0.78,  # the whole test set apart; the curve stays on its sample
        "test/final_loss": 0.5, "test/loss": 0.6,
        "test/final_acc_discrete": 0.8, "test/acc_discrete": 0.8}  # no sample (global_test_samples=null)


def test_params_are_what_a_researcher_varies():
    from federated_nas.tracking.run_record import researcher_params

    config = {"seed": 1, "run_name": "x", "paths": {"log_dir": "/abs/logs"}, "logger": {"run_name": "x"},
              "dataset": {"_target_": "f", "name": "mnist", "data_dir": "/abs/data"},
              "search_space": {"_partial_": True, "C": 8}, "algorithm": {"lr": 0.1, "search_space": {"C": 8}},
              "partition": {"name": "dirichlet", "label": "dir0.5", "alpha": 0.5}, "model": {"note": "y" * 300}}
    params = researcher_params(config)
    assert params == {"seed": "1", "dataset.name": "mnist", "search_space.C": "8", "algorithm.lr": "0.1",
                      "partition.name": "dirichlet", "partition.alpha": "0.5", "model.note": "y" * 250}


def test_run_description_names_the_setting_accuracies_and_genotype():
    from federated_nas.tracking.run_record import run_description

    tags = {"algorithm": "fednas", "dataset": "fashion_mnist", "partition": "dirichlet", "partition.alpha": 0.5,
            "num_clients": 10, "seed": 0}
    final = {"global_test_acc": 0.812, "best_global_test_acc": 0.805, "best_round": 47,
             "client_test_acc_mean": 0.79, "client_test_acc_std": 0.05}
    text = run_description(final, tags, 50, "Genotype(normal=[('sep_conv_3x3', 0)], ...)")
    first_line = "**fednas · fashion_mnist · dirichlet(alpha=0.5) · 10 clients · 50 rounds · seed 0**"
    assert text.splitlines()[0] == first_line
    assert "- global test accuracy, whole test set: 81.2%" in text
    assert "- best round accuracy: 80.5% (round 47)" in text
    assert "- clients' local test accuracy, mean: 79.0% ± 5.0" in text
    assert text.endswith("Genotype: `Genotype(normal=[('sep_conv_3x3', 0)], ...)`")


def test_mlflow_ui_script_prints_each_experiments_runs_url(mlflow_store, tmp_path, capsys):
    from federated_nas.tracking.ui import ui_command

    script = load_script("mlflow_ui")
    script.main(["--tracking-uri", mlflow_store, "--port", "5123", "--print-only"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("search: http://127.0.0.1:5123/#/experiments/")
    assert lines[0].endswith("/runs?workflowType=machine_learning")  # the runs table, not the GenAI overview
    script.main(["--tracking-uri", f"sqlite:///{tmp_path}/none.db", "--print-only"])
    assert capsys.readouterr().out.startswith("no runs in sqlite:///")
    assert not (tmp_path / "none.db").exists()  # looking created no store
    assert ui_command(mlflow_store, tmp_path, 5123)[-2:] == ["--workers", "1"]


def test_sweep_jobs_nest_under_one_parent_run(tmp_path):
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    from federated_nas.tracking.mlflow_tracker import PARENT_TAG, RunTracker, store_lock

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parents = []
    for _ in range(2):  # two jobs of one sweep, one after the other
        with store_lock(uri):
            tracker = RunTracker(MLFlowLogger(experiment_name="search", tracking_uri=uri,
                                              artifact_location=str(tmp_path / "artifacts")))
            parents.append(tracker.join_sweep("/logs/search/multiruns/2026-12-01_20-00-00_000000"))
    client = MlflowClient(uri)
    parent = client.get_run(parents[0])
    assert parents[0] == parents[1] and parent.info.run_name == "sweep-2026-12-01_20-00-00_000000"
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parents[0]}'")
    assert len(children) == 2


def test_opening_tracker_lets_the_run_go_on_and_waits_at_first_use():
    """The run does not wait for MLflow to open; its first use of the tracker does, and gets the tracker's."""
    from federated_nas.tracking.mlflow_tracker import OpeningTracker, RunTracker

    release, opened = threading.Event(), RunTracker(None)

    def open_slowly():
        release.wait(10)
        return opened

    tracker = OpeningTracker(open_slowly)  # returns while the store is still "opening"
    assert not tracker._opened.done()
    release.set()
    assert tracker.run_id is None and tracker.result() is opened
    tracker.finish()


def test_an_opening_error_is_raised_at_first_use_and_does_not_hide_a_runs_own():
    from federated_nas.tracking.mlflow_tracker import OpeningTracker

    def fail():
        raise ConfigError("logger.tracking_uri=x: cannot create the local store")

    tracker = OpeningTracker(fail)
    with pytest.raises(ConfigError, match="cannot create the local store"):
        tracker.log_metrics({"acc": 1.0}, step=1)
    tracker.finish("FAILED")  # a failed run: its own error is the one raised, not this one
    with pytest.raises(ConfigError, match="cannot create the local store"):
        tracker.finish()


def test_the_architecture_table_is_kept_in_the_run_dir_and_uploaded_without_reading_the_store_back(tmp_path):
    """MLflow's log_table downloaded the stored table every round to append one row; the run dir's copy is the
    table now. MLflow still reads it as a table (load_table, the UI's artifact tag), and a round run again
    (a resumed run) replaces its row instead of adding a second one."""
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    from federated_nas.tracking.mlflow_tracker import RunTracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = RunTracker(MLFlowLogger(experiment_name="search", tracking_uri=uri,
                                      artifact_location=str(tmp_path / "artifacts")))
    table = tmp_path / "run" / "architecture_history.json"
    for round_, genotype in ((1, "a"), (2, "b"), (2, "c")):
        tracker.log_table_rows({"round": [round_], "genotype": [genotype], "global_test_acc": [0.5]}, table)
    tracker.finish()
    client = MlflowClient(uri)
    stored = client.load_table(tracker.logger.experiment_id, "architecture_history.json", run_ids=[tracker.run_id])
    assert stored["round"].tolist() == [1, 2] and stored["genotype"].tolist() == ["a", "c"]
    tags = client.get_run(tracker.run_id).data.tags
    assert '"type": "table"' in tags["mlflow.loggedArtifacts"] and tags["mlflow.loggedArtifacts"].count("path") == 1
    RunTracker(None).log_table_rows({"round": [3], "genotype": ["d"], "global_test_acc": [0.6]}, table)
    assert len(__import__("json").loads(table.read_text())["data"]) == 3  # logger=none keeps the run dir's copy


def test_time_to_accuracy_has_known_answers(tmp_path, capsys):
    """The first round whose curve point (the sampled evaluation, also at the last round) reaches the target,
    with the loop seconds then; the script reads it from runs' checkpoints and averages over them."""
    from federated_nas.federation.checkpoint import save_checkpoint
    from federated_nas.tracking.run_record import time_to_accuracy

    history = [{"round": 0, "global_test_acc": 0.5, "elapsed_seconds": 10.0},
               {"round": 1, "global_test_acc": 0.79, "elapsed_seconds": 20.0},
               {"round": 2, "global_test_acc": 0.78, "global_test_acc_sampled": 0.81, "elapsed_seconds": 35.0}]
    assert time_to_accuracy(history, 0.8) == (2, 35.0)  # the last round's full 0.78 is not its curve point
    assert time_to_accuracy(history, 0.5) == (0, 10.0)
    assert time_to_accuracy(history, 0.9) is None
    for name, curve in (("a", history), ("b", [dict(h, elapsed_seconds=2 * h["elapsed_seconds"]) for h in history])):
        save_checkpoint(tmp_path / name / "checkpoints", {"history": curve})
    result = load_script("time_to_accuracy").main([str(tmp_path / "a"), str(tmp_path / "b"), "--target", "0.8"])
    assert [r["seconds"] for r in result["rows"]] == [35.0, 70.0]
    assert result["summary"]["seconds"] == "52.5 ± 24.7" and result["summary"]["final_acc"] == "78.0 ± 0.0"
    assert "| 3 | 35 | 78.00 | 35 |" in capsys.readouterr().out
    # --run: the default command per seed (here a tiny one), then the same table
    from helpers import TINY

    ran = load_script("time_to_accuracy").main(["--run", "--seeds", "0", "--out", str(tmp_path / "runs"), "--target",
                                                "0.05", *TINY, f"paths.root_dir={tmp_path}"])
    assert ran["rows"][0]["run_dir"] == str(tmp_path / "runs" / "seed0") and ran["rows"][0]["round"] == 0


def test_time_to_accuracy_refuses_a_missing_entry_point(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script("time_to_accuracy").main(["--run", "--search", str(tmp_path / "search.py")])
    assert f"--search {tmp_path / 'search.py'}: no such file" in capsys.readouterr().err
