"""Scoring searches against the benchmark, and its baselines: known answers on hand-made tables and alpha."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from federated_nas.bench import Bench, CellSpace
from federated_nas.bench import build as bench_build
from federated_nas.bench.baselines import (
    budget_for_cost,
    genotype_multiplicity,
    halving_budgets,
    parameter_count,
    random_keys,
    random_sampling,
    random_search,
    successive_halving,
)
from federated_nas.bench.build import BuildSpec, spec_with
from federated_nas.bench.train import Budget, NetworkShape, SplitSpec, build_network, build_split
from federated_nas.errors import ConfigError, DataError
from federated_nas.federation.checkpoint import read_checkpoint
from federated_nas.runs import run_search
from federated_nas.tracking.bench_score import (SearchScore, architecture_log_probabilities, kendall_tau, method_table,
                                                read_records, score_record, score_search, search_record, split_of)
from helpers import ROOT, compose_config

sys.path.insert(0, str(ROOT / "scripts"))
import bench as bench_cli  # noqa: E402

OPS = ("max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
HAND = {"max3~0+max3~1|max3~0+max3~1": [0.50, 0.60], "skip~0+skip~1|skip~0+skip~1": [0.70, 0.70],
        "sep3~0+sep3~1|sep3~0+sep3~1": [0.80, 0.90]}


def write_table(path: Path, accs: dict[str, list[float]], splits=("dir0.1",), spec: dict | None = None,
                params: dict[str, int] | None = None) -> Path:
    table = {"format": "fednas-bench/1", "name": path.name.split(".")[0],
             "space": {"primitives": list(OPS), "steps": 2, "raw": 768, "unique": 648},
             "spec": spec or {}, "splits": list(splits), "seeds": [0, 1], "columns": ["global_acc", "client_acc_mean"],
             "architectures": {key: {"params": (params or {}).get(key, 100), "flops": 1000,
                                     **{split: {"global_acc": a, "client_acc_mean": a} for split in splits}}
                               for key, a in accs.items()}}
    return bench_build.write_table(table, path)


# --- the method's ranking of the space ---------------------------------------------------------------------
def test_log_probability_of_every_architecture_has_a_known_answer():
    """Uniform alpha but sep3 on edge 0 (node 0 from input 0) three times as likely as each other op: p = 1/2
    there, 1/6 for the others, 1/4 on every other edge. Every cell uses edge 0 (node 0 reads both inputs), so
    a key scores 3 ln(1/4) + ln(1/2) if one of its genotypes puts sep3 there, else 3 ln(1/4) + ln(1/6)."""
    alpha = torch.zeros(5, 4, dtype=torch.float64)
    alpha[0, OPS.index("sep_conv_3x3")] = math.log(3)
    scores = architecture_log_probabilities({"alpha_normal": alpha}, list(OPS), CellSpace())
    assert len(scores) == 648
    high, low = 3 * math.log(0.25) + math.log(0.5), 3 * math.log(0.25) + math.log(1 / 6)
    assert scores["sep3~0+skip~1|max3~0+max3~2"] == pytest.approx(high)
    assert scores["skip~0+sep3~1|max3~0+max3~2"] == pytest.approx(low)
    # node 1 also reads both inputs: the twins are interchangeable, either one may be node 0 (the max is taken)
    assert scores["max3~0+max3~1|sep3~0+dil3~1"] == pytest.approx(high)
    assert set(round(v, 9) for v in scores.values()) == {round(high, 9), round(low, 9)}


def test_removed_ops_and_input_combinations_enter_the_ranking():
    """A removed op scores below every live one; FedMetaNAS' beta weights the input pair a node reads."""
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[2, OPS.index("max_pool_3x3")] = False  # node 1 from input 0: no max pool
    beta = torch.zeros(4)  # node 0: one pair (0, 1); node 1: (0, 1), (0, 2), (1, 2)
    beta[1:] = torch.tensor([math.log(2), 0.0, 0.0])  # node 1 reads (0, 1) with p = 1/2, the others 1/4
    state = {"alpha_normal": torch.zeros(5, 4), "op_mask_normal": mask, "beta_normal": beta}
    scores = architecture_log_probabilities(state, list(OPS), CellSpace())
    edges = 4 * math.log(0.25)
    assert scores["skip~0+skip~1|skip~0+skip~2"] == pytest.approx(edges + math.log(1 / 3) - math.log(0.25) + math.log(0.25))
    assert scores["skip~0+skip~1|skip~1+skip~2"] == pytest.approx(edges + math.log(0.25))
    assert scores["max3~0+skip~1|max3~0+skip~2"] < -1e8  # needs the removed op
    with pytest.raises(DataError, match="not the benchmark's space"):
        architecture_log_probabilities(state, ["none", "skip_connect"], CellSpace())


def test_kendall_tau_against_a_hand_table(tmp_path):
    bench = Bench.load(write_table(tmp_path / "hand.json.gz", HAND))
    keys = list(HAND)  # ascending ground truth
    assert kendall_tau({k: float(i) for i, k in enumerate(keys)}, bench, "dir0.1") == pytest.approx(1.0)
    assert kendall_tau({k: -float(i) for i, k in enumerate(keys)}, bench, "dir0.1") == pytest.approx(-1.0)
    assert kendall_tau({k: [0.0, 2.0, 1.0][i] for i, k in enumerate(keys)}, bench, "dir0.1") == pytest.approx(1 / 3)
    assert kendall_tau({k: 0.0 for k in keys}, bench, "dir0.1") is None  # uniform alpha ranks nothing


# --- baselines -----------------------------------------------------------------------------------------------
def test_random_sampling_has_known_answers(tmp_path):
    multiplicity = genotype_multiplicity(CellSpace())
    assert sum(multiplicity.values()) == 768 and len(multiplicity) == 648
    assert multiplicity["max3~0+skip~1|sep3~0+dil3~1"] == 2  # the twin nodes, written in either order
    assert multiplicity["max3~0+max3~1|max3~0+max3~1"] == 1  # identical twins: one genotype
    assert multiplicity["max3~0+skip~1|sep3~0+dil3~2"] == 1
    # the hand table's three cells are one genotype each: a plain mean over them
    expected = random_sampling(Bench.load(write_table(tmp_path / "hand.json.gz", HAND)), "dir0.1")
    assert expected["accuracy"] == pytest.approx(0.70) and expected["regret"] == pytest.approx(0.15)
    assert expected["percentile"] == pytest.approx(200 / 3) and expected["p_top5pct"] == pytest.approx(1 / 3)
    assert expected["accuracy_std"] == pytest.approx(math.sqrt((0.15 ** 2 + 0 + 0.15 ** 2) / 3))


def test_parameter_count_has_known_answers(tmp_path):
    """The largest cell is the pick (ties: their mean); τ ranks the space by size against the ground truth."""
    sizes = {key: 100 * (i + 1) for i, key in enumerate(HAND)}  # size follows accuracy: sep3 largest and best
    found = parameter_count(Bench.load(write_table(tmp_path / "a.json.gz", HAND, params=sizes)), "dir0.1")
    assert found["keys"] == ["sep3~0+sep3~1|sep3~0+sep3~1"] and found["accuracy"] == pytest.approx(0.85)
    assert found["percentile"] == 100.0 and found["regret"] == 0.0 and found["kendall_tau"] == pytest.approx(1.0)
    tied = {key: 100 if key.startswith("sep3") else 300 for key in HAND}  # the two worst tie for largest
    found = parameter_count(Bench.load(write_table(tmp_path / "b.json.gz", HAND, params=tied)), "dir0.1")
    assert sorted(found["keys"]) == ["max3~0+max3~1|max3~0+max3~1", "skip~0+skip~1|skip~0+skip~1"]
    assert found["accuracy"] == pytest.approx((0.55 + 0.70) / 2) and found["regret"] == pytest.approx((0.30 + 0.15) / 2)
    assert found["percentile"] == pytest.approx((100 / 3 + 200 / 3) / 2)
    # tau-b: the tied pair counts neither way, the other two pairs are discordant: -2 / sqrt(2 x 3)
    assert found["kendall_tau"] == pytest.approx(-2 / math.sqrt(6))


def test_random_search_spends_the_cost_and_picks_on_val():
    assert budget_for_cost(1000, 4, Budget()).rounds == 5  # 4 x 5 rounds x 5 clients x 10 steps
    with pytest.raises(ConfigError, match="fewer candidates"):
        budget_for_cost(100, 4, Budget())
    data = build_split(bench_build.load_dataset("synthetic"), SplitSpec("dir0.1", num_clients=3))
    budget = Budget(rounds=1, clients_per_round=2, local_steps=2, batch_size=8)
    found = random_search(CellSpace(), data, "dir0.1", 3, budget, NetworkShape(C=2), seed=0)
    again = random_search(CellSpace(), data, "dir0.1", 3, budget, NetworkShape(C=2), seed=0)
    assert found.candidates == again.candidates and len(found.candidates) == 3
    assert found.picked == max(found.candidates, key=lambda c: c[1])[0]
    assert found.client_steps == 3 * 1 * 2 * 2
    # each candidate's state to and from 2 clients in its one round: 4 copies of its float32 weights and BN
    # statistics and its int64 BN batch counters
    def state_bytes(key: str) -> int:
        state = build_network(CellSpace().genotype_of(key), data, NetworkShape(C=2)).state_dict().values()
        return sum(t.numel() * (4 if t.is_floating_point() else 8) for t in state)

    assert found.bytes_communicated == 4 * sum(state_bytes(key) for key, _ in found.candidates)


def test_successive_halving_keeps_the_better_half_and_spends_the_cost():
    """2,400 client steps, 8 candidates: 3 rungs of 800 steps each, 8 x 2, 4 x 4 and 2 x 8 rounds of 5 clients x
    10 steps; the survivors of a rung are the better half on the previous rung's val accuracy."""
    assert [b.rounds for b in halving_budgets(2400, 8, Budget())] == [2, 4, 8]
    assert [b.rounds for b in halving_budgets(600, 4, Budget())] == [1, 3]  # 300 steps a rung: 4 x 1, 2 x 3 rounds
    with pytest.raises(ConfigError, match="power of 2"):
        halving_budgets(2400, 6, Budget())
    data = build_split(bench_build.load_dataset("synthetic"), SplitSpec("dir0.1", num_clients=3))
    budget = Budget(rounds=1, clients_per_round=2, local_steps=2, batch_size=8)
    budgets = [budget, dataclasses.replace(budget, rounds=2)]
    found = successive_halving(CellSpace(), data, "dir0.1", 4, budgets, NetworkShape(C=2), seed=0)
    first, second = found.rungs
    assert [key for key, _ in first] == random_keys(CellSpace(), 4, 0) and found.candidates == first
    ranked = sorted(range(4), key=lambda i: -first[i][1])[:2]
    assert [key for key, _ in second] == [first[i][0] for i in sorted(ranked)]
    assert found.picked == max(second, key=lambda c: c[1])[0]
    assert found.client_steps == 4 * 1 * 2 * 2 + 2 * 2 * 2 * 2
    # one rung is random search, whose first rung it shares
    plain = random_search(CellSpace(), data, "dir0.1", 4, budget, NetworkShape(C=2), seed=0)
    assert plain.candidates == first and plain.rungs is None


# --- scoring a search run -----------------------------------------------------------------------------------
def _ranked_table(path: Path, spec: dict | None = None) -> Path:
    """Every architecture of the space, accuracy by its position in key order: 0.1 + 0.8 i / 647."""
    keys = sorted(CellSpace().enumerate())
    return write_table(path, {k: [0.1 + 0.8 * i / 647] * 2 for i, k in enumerate(keys)}, ("dir0.5", "iid"), spec)


def test_a_search_is_scored_and_logged_with_its_run(tmp_path):
    """search_space=bench with bench_table: the run ends with a look-up, in its result, run dir and MLflow."""
    table = _ranked_table(tmp_path / "ranked.json.gz", spec=BuildSpec(dataset="synthetic", num_clients=3).to_dict())
    cfg = compose_config("search", tmp_path, ["algorithm=fednas", "search_space=bench", "partition_seed=0",
                                              f"bench_table={table}"])
    final = run_search(cfg)
    run_dir = Path(final["run_dir"])
    keys = sorted(CellSpace().enumerate())
    key = CellSpace().key_of(run_dir / "genotype.json")
    truth = 0.1 + 0.8 * keys.index(key) / 647
    saved = json.loads((run_dir / "bench_score.json").read_text())
    assert saved["key"] == key and saved["split"] == "dir0.5" and saved["notes"] == []
    assert final["bench_accuracy"] == pytest.approx(truth) and saved["regret"] == pytest.approx(0.9 - truth)
    assert final["bench_percentile"] == pytest.approx(100 * (keys.index(key) + 1) / 648)
    assert saved["client_steps"] == 2 * 3 * cfg.federation.local_epochs * 2  # rounds x clients x epochs x batches
    history = read_checkpoint(run_dir / "checkpoints" / "last.pt")["history"]
    assert saved["bytes_communicated"] == sum(r["bytes_sent"] + r["bytes_received"] for r in history) > 0
    assert saved["kendall_tau"] is not None and -1 <= saved["kendall_tau"] <= 1
    run = MlflowClient(cfg.logger.tracking_uri).get_run(final["mlflow_run_id"])
    assert run.data.metrics["bench/accuracy"] == pytest.approx(truth)
    assert run.data.tags["bench.key"] == key and "ranked.json.gz" in run.data.tags["bench.table"]
    # scored again later, on the other split, by the command: the same architecture's other column
    bench_cli.main(["--table", str(table), "score", str(run_dir), "--split", "iid", "--no-mlflow"])
    assert json.loads((run_dir / "bench_score.json").read_text())["split"] == "iid"
    # committed as a record (here through a tuning folder naming it as a pick's seed run) and scored from the
    # record alone: the same numbers as from the run dir, in the methods' table
    tuning = tmp_path / "tune"
    tuning.mkdir()
    (tuning / "tuning.json").write_text(json.dumps({"methods": {"fednas": {"seeds": {"0": {"run_dir": str(run_dir)}}}}}))
    bench_cli.main(["export", str(tuning), "--out", str(tmp_path / "searches.jsonl")])
    table_md = bench_cli.main(["--table", str(table), "methods", str(tmp_path / "searches.jsonl"),
                               "--out", str(tmp_path / "methods.md")])
    assert json.loads((tmp_path / "methods.json").read_text()) == [saved]
    assert f"| fednas | 1 | {100 * truth:.2f} | {saved['percentile']:.1f} |" in table_md
    assert "| random genotype (expected) | - |" in table_md and "**dir0.5**" in table_md
    assert "The table holds" not in table_md  # every architecture of the space: no note
    held = {k: [0.1 + 0.8 * i / 647] * 2 for i, k in enumerate(keys) if k == key or i % 2}  # a build half done
    partial = write_table(tmp_path / "partial.json.gz", held, ("dir0.5", "iid"))
    table_md = bench_cli.main(["--table", str(partial), "methods", str(tmp_path / "searches.jsonl")])
    assert table_md.endswith(f"The table holds {len(held)} of the space's 648 architectures: percentile, regret and "
                             "Kendall τ are over those.")


def test_the_methods_table_has_known_answers():
    """Two seeds at 50% and 70%, percentiles 40 and 60: mean ± sample std; a baseline row after them."""
    def score(acc: float, pct: float, key: str) -> SearchScore:
        return SearchScore(run_dir="r", method="fedx", split="iid", key=key, accuracy=acc, accuracy_std=0.0,
                           percentile=pct, regret=0.9 - acc, best_key="b", best_accuracy=0.9, kendall_tau=0.1,
                           client_steps=600, bytes_communicated=2_000_000, search_seconds=120.0)

    table = method_table([score(0.5, 40.0, "a"), score(0.7, 60.0, "b")],
                         {"iid": [("random search", {"accuracy": [0.6], "percentile": [50.0], "regret": [0.3],
                                                     "client_steps": 600, "keys": ["c"], "megabytes": [1.5],
                                                     "minutes": [0.5]})]})
    lines = table.splitlines()
    assert lines[0] == "**iid**"
    assert lines[4] == "| fedx | 2 | 60.00 ± 14.14 | 50.0 ± 14.1 | 30.00 ± 14.14 | 0.100 ± 0.000 | 600 | 2.0 ± 0.0 | 2.0 ± 0.0 | 2 |"
    assert lines[5] == "| random search | 1 | 60.00 | 50.0 | 30.00 | n/a | 600 | 1.5 | 0.5 | 1 |"


def test_score_refusals_are_one_line(tmp_path, capsys):
    table = _ranked_table(tmp_path / "ranked.json.gz", spec=BuildSpec(dataset="fashion_mnist").to_dict())
    cfg = compose_config("search", tmp_path, ["algorithm=feddsnas", "search_space=bench", "logger=none",
                                              "federation.rounds=1"])
    run_dir = Path(run_search(cfg)["run_dir"])
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    score = score_search(run_dir, checkpoint, Bench.load(table))
    assert score.split == "dir0.5" and any("dataset is synthetic" in note for note in score.notes)
    record = search_record(run_dir, checkpoint)
    with pytest.raises(DataError, match="searched the space s3-max3, the table holds s2-"):
        score_record(dataclasses.replace(record, space="s3-max3"), Bench.load(table))
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("tie_cells: true", "tie_cells: false"))
    with pytest.raises(DataError, match="did not search the benchmark's space"):
        search_record(run_dir, checkpoint)
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("tie_cells: false", "tie_cells: true"))
    (tmp_path / "bad.jsonl").write_text('{"method": "fednas"}\n')
    with pytest.raises(DataError, match="not a search record"):
        read_records(tmp_path / "bad.jsonl")
    assert split_of(OmegaConf.create({"partition": {"name": "iid"}})) == "iid"
    with pytest.raises(ConfigError, match="search_space=bench"):
        run_search(compose_config("search", tmp_path, [f"bench_table={table}"], run="run2"))
    with pytest.raises(ConfigError, match="is none of them"):  # refused before the search, not after it
        run_search(compose_config("search", tmp_path, ["search_space=bench", "partition.alpha=0.3",
                                                       f"bench_table={table}"], run="run3"))
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("name: dirichlet", "name: label_skew"))
    with pytest.raises(DataError, match="none of the table's splits"):
        score_search(run_dir, checkpoint, Bench.load(table))
    with pytest.raises(SystemExit):
        bench_cli.main(["--table", str(table), "score", str(tmp_path)])
    assert "has no checkpoints/last.pt" in capsys.readouterr().err


def test_partition_seed_fixes_the_clients_across_seeds(tmp_path):
    from federated_nas.builders import build_data

    def labels(seed: int, partition_seed) -> list:
        cfg = compose_config("search", tmp_path, [f"seed={seed}", f"partition_seed={partition_seed}"])
        return [client.train.tensors[1].tolist() for client in build_data(cfg).clients]

    assert labels(0, 0) == labels(1, 0)
    assert labels(0, "null") != labels(1, "null")


def test_the_query_and_baseline_commands_run(tmp_path, capsys):
    table = _ranked_table(tmp_path / "ranked.json.gz", spec=spec_with(
        BuildSpec(dataset="synthetic", num_clients=3), rounds=1, clients_per_round=2, local_steps=1, batch_size=8,
        C=2).to_dict())
    best = sorted(CellSpace().enumerate())[-1]
    answer = bench_cli.main(["--table", str(table), "query", best])
    assert answer["dir0.5"]["percentile"] == 100.0 and "regret 0.00" in capsys.readouterr().out
    expected = bench_cli.main(["--table", str(table), "random-sampling"])
    assert 0.1 < expected["iid"]["accuracy"] < 0.9
    found = bench_cli.main(["--table", str(table), "random-search", "--client-steps", "8", "--candidates", "2",
                            "--seeds", "0", "1", "--splits", "dir0.5", "--out", str(tmp_path / "rs.json")])
    assert found["rounds_each"] == 2 and len(found["splits"]["dir0.5"]["runs"]) == 2
    assert json.loads((tmp_path / "rs.json").read_text())["candidates"] == 2
    halved = bench_cli.main(["--table", str(table), "random-search", "--halving", "--client-steps", "16",
                             "--candidates", "4", "--seeds", "0", "--splits", "dir0.5", "--out", str(tmp_path / "sh.json")])
    assert halved["rounds_each"] == [1, 2] and halved["splits"]["dir0.5"]["runs"][0]["client_steps"] == 16
    # before the table exists: the build's spec says the budget, the picks are looked up by methods
    spec_json = tmp_path / "spec.json"
    spec_json.write_text(json.dumps(Bench.load(table).table["spec"]))
    early = bench_cli.main(["--table", str(tmp_path / "later.json.gz"), "random-search", "--client-steps", "8",
                            "--candidates", "2", "--seeds", "0", "1", "--splits", "dir0.5", "--spec", str(spec_json),
                            "--out", str(tmp_path / "rs-early.json")])
    assert "accuracy" not in early["splits"]["dir0.5"]["runs"][0]
    assert [r["picked"] for r in early["splits"]["dir0.5"]["runs"]] == [r["picked"] for r in found["splits"]["dir0.5"]["runs"]]
    (tmp_path / "none.jsonl").write_text("")
    table_md = bench_cli.main(["--table", str(table), "methods", str(tmp_path / "none.jsonl"), "--random-search",
                               str(tmp_path / "rs.json"), str(tmp_path / "rs-early.json")])
    rows = [line for line in table_md.splitlines() if line.startswith("| random search, 2 x 2 rounds | 2 |")]
    assert len(rows) == 2 and rows[0].split(" | ")[:7] == rows[1].split(" | ")[:7]  # the same picks, looked up alike
    halving_md = bench_cli.main(["--table", str(table), "methods", str(tmp_path / "none.jsonl"), "--random-search",
                                 str(tmp_path / "sh.json")])
    assert "| successive halving, 4/2 x 1/2 rounds | 1 |" in halving_md
    assert rows[0].split(" | ")[2] == f"{100 * found['splits']['dir0.5']['summary']['accuracy'][0]:.2f} ± " \
        f"{100 * found['splits']['dir0.5']['summary']['accuracy'][1]:.2f}" and rows[0].split(" | ")[6] == "8"
    # picks trained to another budget than the table's are refused
    early["spec"] = "another"
    (tmp_path / "rs-other.json").write_text(json.dumps(early))
    with pytest.raises(SystemExit):
        bench_cli.main(["--table", str(table), "methods", str(tmp_path / "none.jsonl"), "--random-search",
                        str(tmp_path / "rs-other.json")])
    assert "trained its candidates to build spec another" in capsys.readouterr().err


# --- query-based search over the table ----------------------------------------------------------------------
def test_a_mutation_changes_one_edge_and_stays_in_the_space():
    import random

    from federated_nas.bench.baselines import mutate
    from federated_nas.bench.space import canonical, format_key

    space, rng = CellSpace(), random.Random(0)
    keys = set(space.enumerate())
    for cell in list(space.raw_cells())[::37]:
        child = mutate(cell, space.primitives, rng)
        gone = [edge for node, other in zip(cell, child) for edge in set(node) - set(other)]
        new = [edge for node, other in zip(cell, child) for edge in set(other) - set(node)]
        assert len(gone) == len(new) == 1 and format_key(*canonical(child)) in keys  # one edge replaced
        assert all(len({s for s, _ in node}) == 2 for node in child)


def test_evolution_climbs_a_smooth_table_and_beats_random_queries(tmp_path):
    """Accuracy grows with the number of sep_conv edges (noise-free): evolution, which keeps mutating the fittest,
    reaches the all-sep_conv cell in 60 queries on most seeds; random search at 60 queries rarely does."""
    from federated_nas.bench.baselines import query_search_curves, regularized_evolution

    keys = sorted(CellSpace().enumerate())
    table = Bench.load(write_table(tmp_path / "smooth.json.gz",
                                   {k: [0.1 + 0.2 * k.count("sep3")] * 2 for k in keys}))
    run = regularized_evolution(table, "dir0.1", 60, population=10, sample=3, seed=1)
    assert run == regularized_evolution(table, "dir0.1", 60, population=10, sample=3, seed=1)  # seeded
    assert len(run.queries) == len(run.picked) == 60
    fitness = dict(run.queries)
    assert all(fitness[run.picked[i]] == max(f for _, f in run.queries[: i + 1]) for i in range(60))
    curves = query_search_curves(table, "dir0.1", [10, 60], repeats=12, population=10, sample=3)
    evolution, rand = curves["regularized_evolution"], curves["random_queries"]
    assert evolution[60]["regret"][0] < rand[60]["regret"][0]
    assert evolution[60]["accuracy"][0] >= evolution[10]["accuracy"][0]
    with pytest.raises(ConfigError, match="sample"):
        regularized_evolution(table, "dir0.1", 10, population=3, sample=5)


def test_the_evolution_command_prints_and_writes_its_curves(tmp_path, capsys):
    table = _ranked_table(tmp_path / "ranked.json.gz")
    result = bench_cli.main(["--table", str(table), "evolution", "--queries", "3", "8", "--repeats", "3",
                             "--population", "4", "--sample", "2", "--splits", "iid", "--out", str(tmp_path / "e.json")])
    out = capsys.readouterr().out
    assert "| iid | 8 |" in out and set(result["splits"]["iid"]) == {"regularized_evolution", "random_queries"}
    assert json.loads((tmp_path / "e.json").read_text())["splits"]["iid"]["random_queries"]["8"]["regret"][0] >= 0
    assert "| iid | 3 |" in (tmp_path / "e.md").read_text()


# --- the committed table -----------------------------------------------------------------------------------
def test_the_committed_table_verifies_is_whole_and_is_what_its_build_finalizes_to(capsys):
    """benchmarks/fednas_bench/fmnist_bench.json.gz: its checksum holds (Bench.load verifies by default), it covers
    the whole space, it is exactly the table the committed build's results give, and the query command, on its
    default table, answers each split's best architecture with the mean of that architecture's trainings."""
    folder = ROOT / "benchmarks" / "fednas_bench"
    bench = Bench.load(folder / "fmnist_bench.json.gz")
    assert len(bench) == bench.table["space"]["unique"] == 648 and bench.splits == ["dir0.1", "iid"]
    spec, records = bench_build.read_build(folder / "build")
    assert bench.table == json.loads(json.dumps(bench_build.table_from_results(spec, records, "fmnist_bench")))
    for split in bench.splits:
        best = bench.best(split)
        answer = bench_cli.main(["query", best.key])
        mean = sum(records[(best.key, split, seed)]["global_acc"] for seed in spec.seeds) / len(spec.seeds)
        assert answer[split]["mean"] == pytest.approx(mean, abs=1e-5) == best.mean
        assert answer[split]["percentile"] == 100.0 and answer[split]["regret"] == 0.0
    assert "percentile 100.0" in capsys.readouterr().out
