"""The tuning protocol: val scores of finished runs, the pick, the table, the digits experiment's grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from federated_nas.config_checks import check_config
from federated_nas.errors import ConfigError, DataError
from federated_nas.federation import server
from federated_nas.federation.evaluation import evaluate
from federated_nas.federation.validation import validation_score
from federated_nas.runs import run_search
from federated_nas.tracking.tuning import format_table, pick, tuning_plan
from helpers import ROOT, TINY, load_script


def keep_the_run(monkeypatch) -> dict:
    """A dict whose "run" will be the FederatedRun the next search runs (its server-side model and data)."""
    live = {}
    real_run = server.FederatedRun.run

    def keeping(self):
        live["run"] = self
        return real_run(self)

    monkeypatch.setattr(server.FederatedRun, "run", keeping)
    return live


@pytest.mark.parametrize("overrides, split", [
    (["algorithm=fedavg", "model=cnn"], "val"),
    (["algorithm=fedmetanas"], "val"),  # pruned, with an annealed temperature the checkpoint must carry
    # the NAS methods fit alpha on val, so a run with a 4th split fraction is scored on that part alone
    (["federation.split=[0.5,0.2,0.1,0.2]"], "holdout"),
])
def test_val_score_of_a_run_is_its_final_model_on_every_clients_held_out_split(tiny_cfg, monkeypatch, overrides,
                                                                                split):
    live = keep_the_run(monkeypatch)
    final = run_search(tiny_cfg("search", ["logger=none", *overrides]))
    score = validation_score(final["run_dir"])
    run = live["run"]
    # directly: the server's own final model, client by client, weighted by split size
    parts = [getattr(client, split) for client in run.data.clients]
    correct = sum(evaluate(run.model, part)[0] * len(part) for part in parts)
    assert 0.0 <= score["val_acc"] <= 1.0
    assert score["scored_on"] == split and score["val_samples"] == sum(map(len, parts)) > 0
    assert score["val_acc"] == pytest.approx(correct / sum(map(len, parts)), abs=1e-12)


def test_the_grid_runs_hold_out_a_part_and_the_picks_do_not():
    script = load_script("tune")
    cfg = digits_compare()
    override = script.grid_split_override(cfg.tuning)
    assert override == ["federation.split=[0.35,0.35,0.1,0.2]"]
    assert list(digits_compare(*override).federation.split) == [0.35, 0.35, 0.1, 0.2]
    assert len(cfg.federation.split) == 3  # the picks' seed runs keep the experiment's split
    with pytest.raises(ConfigError, match="tuning.grid_split"):
        check_config(digits_compare("tuning.grid_split=[0.5,0.5]"))


def test_a_dir_that_is_no_finished_run_is_one_line(tmp_path):
    with pytest.raises(DataError, match="no config.yaml"):
        validation_score(tmp_path)


class ValOnly(dict):
    """A grid point's scores that fail the test on any read of something other than a val metric."""

    def __getitem__(self, key):
        assert key.startswith(("val_", "personal_val_")), f"the pick read {key}"
        return super().__getitem__(key)


def test_the_pick_is_the_best_val_score_and_reads_nothing_else():
    scores = [ValOnly(val_acc=0.80, val_loss=0.5, global_test_acc=0.99),
              ValOnly(val_acc=0.91, val_loss=0.4, global_test_acc=0.10),
              ValOnly(val_acc=0.91, val_loss=0.3, global_test_acc=0.50),
              ValOnly(val_acc=0.60, val_loss=0.9, global_test_acc=0.95)]
    assert pick(scores, "val_acc") == 1  # the first of equals
    assert pick(scores, "val_loss") == 2  # lower wins
    with pytest.raises(ConfigError, match="must be one of val_acc, val_loss, personal_val_acc"):
        pick(scores, "global_test_acc")
    with pytest.raises(ConfigError, match=r"grid points \[0, 1, 2, 3\] have no such score"):
        pick(scores, "personal_val_acc")  # runs that did not personalize
    personal = [ValOnly(val_acc=0.9, personal_val_acc=0.7, personal_val_loss=0.2),
                ValOnly(val_acc=0.5, personal_val_acc=0.8, personal_val_loss=0.3)]
    assert (pick(personal, "val_acc"), pick(personal, "personal_val_acc"), pick(personal, "personal_val_loss")) == (
        0, 1, 0)


def test_a_personalized_runs_score_is_each_clients_personalized_model_on_its_own_holdout(tiny_cfg, monkeypatch):
    """personal_val_acc: the mean over clients of the model the run's personalization built, on the client's
    holdout; the same models score the run's own local test accuracy, so scoring rebuilds them exactly."""
    from federated_nas.federation.personalization import adapt_client

    live = keep_the_run(monkeypatch)
    final = run_search(tiny_cfg("search", ["logger=none", "algorithm=fedavg", "model=cnn", "personalize=true",
                                           "algorithm.adapt_steps=3", "federation.split=[0.5,0.2,0.1,0.2]"]))
    score = validation_score(final["run_dir"])
    run = live["run"]
    adapted = [adapt_client(run.algorithm, run.model, client, run.settings.batch_size, run.seed, run.settings.rounds,
                            run.personal) for client in run.data.clients]
    on_holdout = [evaluate(model, client.holdout)[0] for model, client in zip(adapted, run.data.clients)]
    on_test = [evaluate(model, client.test)[0] for model, client in zip(adapted, run.data.clients)]
    assert score["personal_val_acc"] == pytest.approx(sum(on_holdout) / len(on_holdout), abs=1e-12)
    saved = json.loads((Path(final["run_dir"]) / "personalized" / "client_accuracy.json").read_text())
    assert saved["after"] == pytest.approx(on_test, abs=1e-12)
    assert score["val_acc"] != score["personal_val_acc"]  # 3 SGD steps on each client's data changed something


def test_no_method_may_have_more_grid_points_than_another():
    tuning = {"seeds": [0], "methods": {"fedavg": {"overrides": ["algorithm=fedavg"], "grid": [["a=1"], ["a=2"]]},
                                        "fednas": {"overrides": ["algorithm=fednas"], "grid": [["b=1"], ["b=2"], ["b=3"]]}}}
    with pytest.raises(ConfigError, match="same number"):
        tuning_plan(tuning)


def hand_made_result() -> dict:
    def seed_run(acc, discrete=None):
        run = {"global_test_acc": acc, "client_test_acc_mean": acc - 0.01, "elapsed_seconds": 10.0,
               "wall_seconds": 20.0}
        return run if discrete is None else {**run, "global_test_acc_discrete": discrete}

    return {"selection_metric": "val_acc", "seeds": [0, 1, 2], "grid_points": 2,
            "budget": {"federation.rounds": 12, "federation.local_epochs": 1},
            "methods": {
                "fedavg": {"grid": [{"overrides": ["algorithm.lr=0.05"], "val": {"val_acc": 0.5}},
                                    {"overrides": ["federation.local_epochs=5"], "val": {"val_acc": 0.93}}],
                           "pick": 1, "seeds": {"0": seed_run(0.90), "1": seed_run(0.92), "2": seed_run(0.94)}},
                "fednas": {"grid": [{"overrides": ["algorithm.lr=0.05"], "val": {"val_acc": 0.95}},
                                    {"overrides": ["algorithm.lr=0.2"], "val": {"val_acc": 0.9}}],
                           "pick": 0, "seeds": {"0": seed_run(0.9, 0.1), "1": seed_run(0.9, 0.2),
                                                "2": seed_run(0.9, 0.3)}}}}


def test_the_table_gives_each_pick_mean_and_std_over_seeds():
    table = format_table(hand_made_result())
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| fed")}
    assert rows["fedavg"].startswith("| fedavg | federation.local_epochs=5 | 93.0% | 92.0 ± 2.0 |  | 91.0 ± 2.0 |")
    assert "| 90.0 ± 0.0 | 20.0 ± 10.0 |" in rows["fednas"]
    assert "over seeds 0, 1, 2" in table
    assert "Held equal: federation.rounds=12." in table
    assert "federation.local_epochs (fedavg: by its grid; the others 1)" in table


def test_the_table_of_a_personalized_tuning_shows_local_accuracy_after_personalization():
    result = hand_made_result()
    result["selection_metric"] = "personal_val_acc"
    for method, local in (("fedavg", 0.8), ("fednas", 0.7)):
        for point in result["methods"][method]["grid"]:
            point["val"]["personal_val_acc"] = point["val"]["val_acc"] - 0.1
        for seed, record in result["methods"][method]["seeds"].items():
            record["personalized_acc_after_mean"] = local + 0.01 * int(seed)
    table = format_table(result)
    assert "| local test acc after personalization (%) |" in table.splitlines()[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| fed")}
    assert rows["fedavg"].startswith("| fedavg | federation.local_epochs=5 | 83.0% | 92.0 ± 2.0 |  | 91.0 ± 2.0 "
                                     "| 81.0 ± 1.0 |")
    assert "scored by the mean over clients of each personalized model" in table


def test_the_budget_line_names_a_setting_a_method_sets_for_itself():
    """nas_methods_cpu gives the single-path methods 48 rounds (equal wall time): said, not called equal."""
    result = hand_made_result()
    result["methods"]["fedavg"]["grid"][1]["overrides"] = ["algorithm.lr=0.2"]
    result["methods"]["fednas"]["overrides"] = ["algorithm=fednas", "federation.rounds=48"]
    assert ("Held equal: federation.local_epochs=1. Set per method: federation.rounds (fednas 48; the others 12)."
            in format_table(result))
    result["methods"]["fednas"]["retrain"] = ["federation.rounds=80"]  # metanas_vs_fednas' FedNAS
    assert ("Searched, then its genotype trained by src/train.py, and scored and timed over both stages: "
            "fednas (federation.rounds=80).") in format_table(result)


def test_make_compare_tuned_reprints_the_table_of_a_tuning_json(tmp_path, capsys):
    script = load_script("tune")
    (tmp_path / "tuning.json").write_text(json.dumps(hand_made_result()))
    script.main(["experiment=digits_compare", "--table", "--out", str(tmp_path)])
    assert capsys.readouterr().out.strip() == format_table(hand_made_result())
    with pytest.raises(SystemExit):
        script.main(["experiment=digits_compare", "--table", "--out", str(tmp_path / "none")])
    assert capsys.readouterr().err.startswith("error: ")


def test_make_compare_tuned_on_a_fresh_clone_prints_the_committed_tuning(tmp_path, capsys, monkeypatch):
    """No logs/tune_<experiment>/ yet: the table of benchmarks/tune_<experiment>.json, the README's, and which it is."""
    script = load_script("tune")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "tune_digits_compare.json").write_text(json.dumps(hand_made_result()))
    monkeypatch.setattr(script, "ROOT", tmp_path)
    script.main(["experiment=digits_compare", "--table"])
    first, table = capsys.readouterr().out.strip().split("\n", 1)
    assert "benchmarks/tune_digits_compare.json" in first and table == format_table(hand_made_result())
    # a tuning run with --out (one experiment on two splits): committed under its folder's name
    (tmp_path / "benchmarks" / "tune_digits_iid.json").write_text(json.dumps(hand_made_result()))
    script.main(["experiment=digits_compare", "--table", "--out", str(tmp_path / "logs" / "tune_digits_iid")])
    assert "benchmarks/tune_digits_iid.json" in capsys.readouterr().out.split("\n", 1)[0]
    with pytest.raises(SystemExit):  # an experiment without one: the one-line error
        script.main(["experiment=nas_methods_cpu", "--table"])
    assert "make tune EXPERIMENT=nas_methods_cpu" in capsys.readouterr().err


def test_a_run_dir_of_other_overrides_is_never_reused(tmp_path):
    """An edited grid must not pick up the old point's finished run under the same index."""
    script = load_script("tune")
    run_dir = tmp_path / "runs" / "fedavg" / "p0-s0"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- algorithm.lr=0.05\n")
    (run_dir / "FINISHED").touch()
    with pytest.raises(DataError, match="holds a run of other overrides"):
        script.run_once(["algorithm.lr=0.2"], run_dir, tmp_path / "p0.log")


def digits_compare(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("search", overrides=["experiment=digits_compare", *overrides])


def test_every_grid_point_of_digits_compare_composes_and_passes_the_checks():
    cfg = digits_compare()
    plans = tuning_plan(cfg.tuning)
    assert [plan.name for plan in plans] == ["fedavg", "fednas", "fedmetanas"]
    assert {len(plan.grid) for plan in plans} == {3}
    for plan in plans:
        for point in plan.grid:
            run = digits_compare(*plan.overrides, *point, "logger=none")
            check_config(run)
            assert run.algorithm.name == plan.name
            assert (run.dataset.name, run.partition.alpha, run.federation.num_clients, run.federation.rounds) == (
                "digits", 0.1, 10, 12)


def compose_all_keeping_configs(script, monkeypatch, experiment: str):
    """tune.py's compose_all of ``experiment``, and each config it composed and checked on the way, by
    (config name, overrides): the tests read those rather than compose each again (a second each)."""
    composed, compose_checked = {}, script.compose_checked

    def kept(overrides, where, config_name="search"):
        composed[config_name, tuple(overrides)] = compose_checked(overrides, where, config_name)
        return composed[config_name, tuple(overrides)]

    monkeypatch.setattr(script, "compose_checked", kept)
    return (*script.compose_all([experiment], f"tune_{experiment.split('=')[1]}"), composed)


def test_the_nas_methods_grid_composes_each_method_at_its_budget_and_holds_the_rest_equal(monkeypatch):
    """nas_methods_cpu: the single-path methods at 48 rounds (the wall time of the others' 12), everything
    else the experiment's; tune.py composes and checks every point, with and without the grid's split."""
    script = load_script("tune")
    base, runs, retrains, composed = compose_all_keeping_configs(script, monkeypatch, "experiment=nas_methods_cpu")
    assert set(retrains.values()) == {None}  # every method's search is its final model
    assert list(runs) == ["fednas", "feddsnas", "fedrlnas", "fedmetanas"] and {len(p) for p in runs.values()} == {3}
    assert base.tuning.grid_split == [0.35, 0.35, 0.1, 0.2]
    for name, points in runs.items():
        for point in points:
            run = composed["search", tuple(point)]
            assert run.algorithm.name == name
            assert run.federation.rounds == (48 if name in ("feddsnas", "fedrlnas") else 12)
            assert (run.dataset.name, run.partition.alpha, run.federation.local_batches) == (
                "fashion_mnist", 0.1, 10)


def test_metanas_vs_fednas_tunes_fednas_as_search_then_retrain_and_fedmetanas_alone(monkeypatch):
    """FedNAS' runs are a 6-round search and an 80-round train stage (src/train.py, FedAvg on the genotype,
    the grid's split too); FedMetaNAS' a 12-round search; the same 3 search settings for both."""
    script = load_script("tune")
    base, runs, retrains, composed = compose_all_keeping_configs(script, monkeypatch, "experiment=metanas_vs_fednas")
    assert list(runs) == ["fednas", "fedmetanas"] and retrains["fedmetanas"] is None
    split = script.grid_split_override(base.tuning)
    searches = {name: [composed["search", (*point, *split)] for point in points] for name, points in runs.items()}
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        train = compose("train", overrides=[*retrains["fednas"], *split, "search_run=somewhere"])
    assert [run.federation.rounds for run in searches["fednas"]] == [6, 6, 6]
    assert [run.federation.rounds for run in searches["fedmetanas"]] == [12, 12, 12]
    assert [(run.algorithm.lr, run.algorithm.alpha_optimizer.lr) for run in searches["fednas"]] == [
        (run.algorithm.lr, run.algorithm.alpha_optimizer.lr) for run in searches["fedmetanas"]]
    assert (train.algorithm.name, train.model._target_.rsplit(".", 1)[1], train.federation.rounds) == (
        "fedavg", "genotype_network", 80)
    assert list(train.federation.split) == list(searches["fednas"][0].federation.split) == [0.35, 0.35, 0.1, 0.2]


def test_a_search_then_retrain_run_is_scored_on_its_trained_network_and_timed_over_both_stages(tmp_path):
    """The two stages for real (tiny, in subprocesses): the train stage reads the search's genotype, the score
    is the trained network's on the holdout, and the loop time is the sum of both stages'."""
    script = load_script("tune")
    common = [*TINY, f"paths.root_dir={tmp_path}", "logger=none", "federation.split=[0.35,0.35,0.1,0.2]"]
    run_dir = tmp_path / "runs" / "fednas" / "p0-s0"
    wall = script.run_method([*common, "algorithm=fednas"], [*common, "federation.rounds=1"], run_dir,
                             tmp_path / "logs" / "fednas-p0-s0.log")
    search_dir = tmp_path / "runs" / "fednas" / "p0-s0-search"
    assert (search_dir / "genotype.json").is_file() and (run_dir / "FINISHED").exists()
    assert (tmp_path / "logs" / "fednas-p0-s0-search.log").is_file()
    train_cfg = OmegaConf.load(run_dir / "config.yaml")
    assert (train_cfg.model._target_.rsplit(".", 1)[1], train_cfg.federation.rounds, train_cfg.search_run) == (
        "genotype_network", 1, str(search_dir))
    assert validation_score(run_dir)["scored_on"] == "holdout"
    from federated_nas.federation.validation import final_metrics

    stages = [final_metrics(d)["elapsed_seconds"] for d in (search_dir, run_dir)]
    assert script.elapsed_seconds(run_dir, ["federation.rounds=1"]) == pytest.approx(sum(stages))
    record = script.seed_record(run_dir, wall, ["federation.rounds=1"])
    assert record["elapsed_seconds"] == pytest.approx(sum(stages)) and record["wall_seconds"] == wall > 0


def test_a_bad_tuning_setting_is_one_line():
    with pytest.raises(ConfigError, match="tuning.selection_metric must be one of val_acc, val_loss, "
                                          "personal_val_acc, personal_val_loss, got 'test_acc'"):
        check_config(digits_compare("tuning.selection_metric=test_acc"))
    with pytest.raises(ConfigError, match=r"tuning.seeds must be a list of integers"):
        check_config(digits_compare("tuning.seeds=[0,-1]"))


COMPARE_CPU_METHODS = ["fedavg", "fedprox", "ditto", "perfedavg", "fedrep", "fedbabu", "fednas", "fedmetanas"]
PERSONAL_NAS_METHODS = ["fednas", "fedmetanas", "fedpnas", "meta_fedpnas", "perfedrlnas", "meta_perfedrlnas"]


@pytest.mark.parametrize("experiment, methods", [("compare_cpu", COMPARE_CPU_METHODS),
                                                 ("compare_cpu_label_skew", COMPARE_CPU_METHODS),
                                                 ("personal_nas_cpu", PERSONAL_NAS_METHODS)])
def test_the_personalization_comparisons_tune_every_method_on_personalized_val_accuracy(experiment, methods,
                                                                                        monkeypatch):
    """Each table's own methods (personal_nas_cpu: the NAS ones, not compare_cpu's), 3 points each, picked on
    personal_val_acc; every point composes and passes the checks with the grid's split, and keeps the
    experiment's budget and personalization."""
    script = load_script("tune")
    base, runs, _, composed = compose_all_keeping_configs(script, monkeypatch, f"experiment={experiment}")
    assert base.tuning.selection_metric == "personal_val_acc" and base.personalize
    assert list(runs) == methods
    assert {len(points) for points in runs.values()} == {3}
    split = script.grid_split_override(base.tuning)
    for name, points in runs.items():
        for point in points:
            run = composed["search", (*point, *split)]
            check_config(run)
            assert run.algorithm.name == name and run.personalize
            assert (run.federation.rounds, run.federation.local_batches, list(run.federation.split)) == (
                8, 10, [0.35, 0.35, 0.1, 0.2])
