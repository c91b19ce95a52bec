"""Random genotypes and networks sized to a parameter budget: what judging a search at equal size rests on."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from federated_nas.errors import ConfigError, DataError
from federated_nas.models.budget import BUDGET_TOLERANCE, count_parameters, width_for_budget
from federated_nas.models.cnn import small_cnn
from federated_nas.search_space.genotypes import Genotype, random_genotype
from federated_nas.search_space.mlp import MLP_PRIMITIVES, genotype_mlp, random_mlp_genotype
from federated_nas.search_space.network import genotype_network
from federated_nas.search_space.operations import PRIMITIVES
from helpers import CONFIG_DIR, compose_config, load_script


@pytest.mark.parametrize("seed", range(20))
def test_a_random_genotype_is_a_valid_cell_of_the_darts_space(seed):
    genotype = random_genotype(seed, steps=4, multiplier=4)
    for edges, concat in ((genotype.normal, genotype.normal_concat), (genotype.reduce, genotype.reduce_concat)):
        assert len(edges) == 8 and concat == [2, 3, 4, 5]
        for node in range(4):
            (op_a, a), (op_b, b) = edges[2 * node: 2 * node + 2]
            assert a != b and 0 <= a < node + 2 and 0 <= b < node + 2  # two distinct earlier nodes
            assert {op_a, op_b} <= set(PRIMITIVES) - {"none"}
    assert Genotype.from_dict(json.loads(genotype.to_json())) == genotype  # passes the whole-file check


def test_a_seeded_random_genotype_is_reproducible_and_seeds_differ():
    torch.manual_seed(0)
    first = random_genotype(3)
    torch.manual_seed(1)  # torch's global state plays no part
    assert random_genotype(3) == first
    assert len({random_genotype(seed).to_json() for seed in range(10)}) == 10


def test_random_genotypes_draw_every_op_and_every_input_about_uniformly():
    """Over 2,000 cells each of the 7 ops is drawn about 1/7 of the time, and node 3 reads each of its
    5 inputs about 2/5 of the time (2 distinct inputs out of 5)."""
    ops = [op for seed in range(2000) for op, _ in random_genotype(seed).normal]
    for op in set(PRIMITIVES) - {"none"}:
        assert abs(ops.count(op) / len(ops) - 1 / 7) < 0.01
    sources = [source for seed in range(2000) for _, source in random_genotype(seed).normal[6:8]]
    for source in range(5):
        assert abs(sources.count(source) / 2000 - 2 / 5) < 0.04


def test_a_random_mlp_genotype_is_valid_and_reproducible():
    genotype = random_mlp_genotype(5, layers=4)
    assert len(genotype.layers) == 4 and set(genotype.layers) <= set(MLP_PRIMITIVES) - {"none"}
    assert random_mlp_genotype(5, layers=4) == genotype
    assert len({tuple(random_mlp_genotype(seed, 4).layers) for seed in range(20)}) > 10


@pytest.mark.parametrize("bad, field", [
    ({"normal": [["sep_conv_9x9", 0]] * 8, "reduce": [["skip_connect", 0]] * 8}, "normal: edge 0: unknown op"),
    ({"normal": [["skip_connect", 0]] * 8, "reduce": [["skip_connect", 0]] * 6 + [["skip_connect", 6]] * 2},
     r"reduce: cell edge 6 \(skip_connect, 6\) feeds node 5"),
    ({"normal": [["skip_connect", 0]] * 7, "reduce": [["skip_connect", 0]] * 8}, "normal: cell has 7 edges"),
])
def test_a_genotype_file_is_checked_whole_with_one_line_naming_the_cell_and_edge(tmp_path, bad, field):
    """A bad op in the reduce cell is caught even where a small network would never build that cell."""
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps({**bad, "normal_concat": [2, 3, 4, 5], "reduce_concat": [2, 3, 4, 5]}))
    with pytest.raises(DataError, match=field) as caught:
        Genotype.load(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("budget", [30_000, 100_000, 200_000])
def test_a_genotype_network_at_a_budget_has_that_many_parameters_within_10_percent(budget):
    net = genotype_network("random", 1, 10, C=4, layers=5, stem_stride=2, genotype_seed=1, budget_params=budget)
    assert abs(count_parameters(net) - budget) <= BUDGET_TOLERANCE * budget
    assert net.size_record == {"C": net.size_record["C"], "params": count_parameters(net), "budget_params": budget}


def test_the_budget_picks_the_width_nearest_the_budget():
    """Known answer: a linear layer 10 -> w has 11w parameters, so a budget of 100 is met by w=9 (99)."""
    assert width_for_budget(lambda w: torch.nn.Linear(10, w), 100, "a linear layer") == 9
    assert width_for_budget(lambda w: torch.nn.Linear(10, w), 105, "a linear layer") == 10  # 110 is nearer than 99


def test_an_unmeetable_budget_is_one_line_naming_the_setting():
    with pytest.raises(ConfigError, match=r"model.budget_params=100: .* even at width 1") as caught:
        genotype_network("random", 1, 10, layers=5, budget_params=100)
    assert "\n" not in str(caught.value)


def test_the_cnn_and_the_mlp_scale_to_the_same_budget():
    cnn = small_cnn(1, 10, budget_params=100_000)
    assert abs(count_parameters(cnn) - 100_000) <= 10_000 and cnn.size_record["first_channels"] == 8
    assert small_cnn(1, 10).size_record == {"first_channels": 32, "params": 1_663_370}  # as given: the paper's
    mlp = genotype_mlp("random", 64, 10, hidden=64, layers=3, budget_params=20_000)
    assert abs(count_parameters(mlp) - 20_000) <= 2_000


def test_the_train_stage_trains_a_random_genotype_at_a_budget_and_records_both(tmp_path):
    """`python src/train.py model.genotype=random model.genotype_seed=3 model.budget_params=N`: no search run
    needed; the run saves its genotype.json like a search and states its size in its tags."""
    from federated_nas.runs import fixed_network_tags, run_train

    cfg = compose_config("train", tmp_path, ["search_space.C=2", "search_space.layers=2", "model.genotype=random",
                                             "model.genotype_seed=3", "model.budget_params=3000", "logger=none",
                                             "federation.rounds=1"])
    final = run_train(cfg)
    run_dir = tmp_path / "train" / "runs" / "run0"
    assert Genotype.load(run_dir / "genotype.json") == random_genotype(3)
    assert abs(final["params"] - 3000) <= 300
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert (saved.model.genotype, saved.model.genotype_seed, saved.model.budget_params) == ("random", 3, 3000)
    tags = fixed_network_tags(genotype_network("random", 1, 10, C=2, layers=2, genotype_seed=3,
                                               budget_params=3000), tmp_path)
    assert tags["model.budget_params"] == 3000 and tags["genotype"].startswith("Genotype(normal=")


def test_the_train_stage_without_a_genotype_names_both_ways_to_give_one(tmp_path):
    from federated_nas.runs import run_train

    with pytest.raises(ConfigError, match="search_run is required .* or model.genotype=<genotype.json>\\|random"):
        run_train(compose_config("train", tmp_path, ["logger=none"]))


def test_client_steps_count_rounds_times_sampled_clients_times_local_batches():
    from federated_nas.tracking.cell_evaluation import client_steps

    fed = {"rounds": 12, "num_clients": 10, "client_fraction": 0.5, "local_epochs": 1, "local_batches": 10}
    assert client_steps({"federation": fed}) == 600  # nas_methods_cpu's FedNAS search
    assert client_steps({"federation": {**fed, "rounds": 48}}) == 2400  # its single-path methods


def test_a_cell_beats_the_random_cells_it_wins_against_at_the_same_seed():
    """Hand-computed: seed 0 wins 2 of 2 pairs, seed 1 ties one (a half) and loses one, seed 2 has no random cell."""
    from federated_nas.tracking.cell_evaluation import beaten_fraction, verdict

    method = {0: 0.80, 1: 0.70, 2: 0.90}
    random_cells = {0: [0.75, 0.60], 1: [0.70, 0.72]}
    assert beaten_fraction(method, random_cells) == pytest.approx(2.5 / 4)
    assert beaten_fraction(method, {}) is None
    assert verdict(2.5 / 4) == "no better (62% of pairs)"
    assert verdict(0.75).startswith("yes") and verdict(0.25).startswith("no, worse")


def test_the_evaluation_table_reports_accuracy_over_seeds_cost_and_the_random_verdict():
    from federated_nas.tracking.cell_evaluation import format_evaluation_table

    run = {"params": 100_000, "search_steps": 600, "train_steps": 600, "search_seconds": 400, "train_seconds": 100}
    rows = [{"name": "fednas", "final_model": "cell", "runs": {0: {**run, "global_test_acc": 0.8},
                                                               1: {**run, "global_test_acc": 0.7}}},
            {"name": "random cells", "final_model": "random", "runs": {}, "compare": False}]
    table = format_evaluation_table(rows, {0: [0.75], 1: [0.65]}).splitlines()
    assert table[2] == ("| fednas | cell | 100,000 | 75.0 ± 7.1 (n=2) | 600 + 600 | 400 + 100 | "
                        "yes (100% of pairs) |")
    assert table[3].startswith("| random cells | random | (not run yet) |")


def test_the_evaluation_experiment_trains_each_searched_cell_of_its_own_seed(tmp_path):
    """Every row composes under train.yaml; a searched row's genotype is its method's search at the run's seed,
    the random row's genotype is drawn with the run's seed, and every network gets the same budget."""

    from hydra import compose, initialize_config_dir

    tune = load_script("tune")
    base, runs, retrains = tune.compose_all(["experiment=evaluate_cells_cpu", f"search_dir={tmp_path}"], "t")
    assert base.tuning.entry == "train" and set(runs) == {"fednas", "fedmetanas", "feddsnas", "fedrlnas", "random", "cnn"}
    assert all(len(points) == 3 for points in runs.values()) and set(retrains.values()) == {None}
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        fednas = compose("train", overrides=[*runs["fednas"][0], "seed=2"])
        random_row = compose("train", overrides=[*runs["random"][1], "seed=1"])
        cnn = compose("train", overrides=[*runs["cnn"][2], "seed=0"])
    assert fednas.search_run == f"{tmp_path}/fednas/s2"
    assert (random_row.model.genotype, random_row.model.genotype_seed) == ("random", 1)
    assert [c.model.budget_params for c in (fednas, random_row, cnn)] == [100_000] * 3
    assert [c.algorithm.lr for c in (fednas, random_row, cnn)] == [0.025, 0.05, 0.1]
    assert cnn.model._target_.endswith("small_cnn") and fednas.federation.rounds == 12


def test_the_diagnostics_count_skips_and_parameter_free_ops_per_method_against_random_cells():
    from federated_nas.tracking.cell_evaluation import format_diagnostics, op_counts

    collapsed = {"normal": [["skip_connect", 0]] * 6 + [["sep_conv_3x3", 1]] * 2,
                 "reduce": [["max_pool_3x3", 0]] * 8}
    assert op_counts(collapsed) == (6, 14, 16)
    table = format_diagnostics({"fednas": {0: {"genotype": collapsed, "alpha_entropy": 2.07}}},
                               [random_genotype(0).__dict__]).splitlines()
    assert table[2] == "| fednas | 2.07 | 6.0 | 87.5 |"
    assert table[3].startswith("| random (1) | - (no alpha) |")


def test_finished_runs_are_packed_and_unpacked_so_a_build_spans_sessions(tmp_path):
    """A fresh clone gets back every finished run (what resuming and the table read) and nothing unfinished."""

    script = load_script("evaluate_cells")
    built = tmp_path / "built"
    for run, done in (("searches/fednas/s0", True), ("tuning/runs/random/p0-s0", True), ("searches/fednas/s1", False)):
        (built / run / "checkpoints").mkdir(parents=True)
        (built / run / "checkpoints" / "last.pt").write_bytes(b"weights")
        (built / run / "search.log").write_text("not packed")
        if done:
            (built / run / "FINISHED").touch()
    archive = tmp_path / "runs.tar.gz"
    assert script.pack_finished_runs(built, archive) == 2
    fresh = tmp_path / "fresh"
    assert script.unpack_finished_runs(fresh, archive) == 2 and script.unpack_finished_runs(fresh, archive) == 0
    assert (fresh / "searches/fednas/s0/checkpoints/last.pt").read_bytes() == b"weights"
    assert (fresh / "tuning/runs/random/p0-s0/FINISHED").is_file()
    assert not (fresh / "searches/fednas/s1").exists() and not (fresh / "searches/fednas/s0/search.log").exists()


def test_a_finished_run_whose_overrides_hold_an_interpolation_is_not_run_again(tmp_path):
    """The searched rows' overrides keep ${search_dir} and ${seed} for the run to resolve; reading them back to
    see whether a finished run is this one must not resolve them (it raised, and killed the tuning's thread)."""

    from omegaconf import OmegaConf

    tune = load_script("tune")
    overrides = ["experiment=evaluate_cells_cpu", "search_run=${search_dir}/fednas/s${seed}", "seed=1"]
    run_dir = tmp_path / "p0-s1"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
    (run_dir / "FINISHED").touch()
    (run_dir / "tuning_wall_seconds").write_text("12.5")
    assert tune.run_once(overrides, run_dir, tmp_path / "log", "train.py") == 12.5
