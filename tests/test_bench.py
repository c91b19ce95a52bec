"""The tabular benchmark: the space's counts, canonical keys, a tiny build end to end, the query API."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import sys
from pathlib import Path

import networkx as nx
import pytest
import torch

from federated_nas.bench import Bench, CellSpace
from federated_nas.bench import build as bench_build
from federated_nas.bench.build import BuildSpec, spec_with
from federated_nas.bench.space import canonical, format_key
from federated_nas.bench.train import Budget, NetworkShape, SplitSpec, build_split, train_fedavg
from federated_nas.errors import ConfigError, DataError
from federated_nas.runs import run_search
from federated_nas.search_space.genotypes import Genotype
from federated_nas.search_space.network import GenotypeNetwork
from federated_nas.search_space.supernet import SearchNetwork
from helpers import ROOT, compose_config

sys.path.insert(0, str(ROOT / "scripts"))
import build_bench  # noqa: E402

OPS = ("max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


# --- the space -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ops, steps, raw, unique", [
    # 2 nodes, n ops: node 0 reads (0, 1), node 1 one of 3 source pairs, n^2 op pairs each: raw 3 n^4. Node 1
    # reading (0, 1) too makes the two nodes interchangeable: n^2 (n^2 + 1) / 2 unordered pairs, + 2 n^4 others
    (OPS[:1], 2, 3, 3),
    (OPS[:2], 2, 48, 42),
    (OPS, 2, 768, 648),  # the benchmark's space
    # 3 nodes A, B, C, 1 op (a cell is its source pairs): 1 x 3 x 6 = 18. B = (0,1), A's twin: C reads (0,1),
    # (0,A)~(0,B), (1,A)~(1,B) or (A,B) -> 4. B = (0,A): C = (0,1) is the twin case again; (0,A), (1,A), (0,B),
    # (1,B), (A,B) -> 5. B = (1,A): C = (0,1) again, (0,A) is the case B = (0,A), C = (1,A) relabelled; (1,A),
    # (0,B), (1,B), (A,B) -> 4. 4 + 5 + 4 = 13
    (OPS[:1], 3, 18, 13),
])
def test_counts_have_known_answers(ops, steps, raw, unique):
    assert CellSpace(ops, steps).counts() == {"raw": raw, "unique": unique}
    assert len(CellSpace(ops, steps).enumerate()) == unique


def _graph(cell) -> nx.DiGraph:
    """A cell as a labelled DAG (inputs and outputs marked, edges carry their op), for networkx' isomorphism."""
    graph = nx.DiGraph()
    graph.add_nodes_from([(0, {"role": "in0"}), (1, {"role": "in1"})])
    for index, node in enumerate(cell):
        graph.add_node(index + 2, role="out")
        for source, op in node:
            graph.add_edge(source, index + 2, op=op)
    return graph


@pytest.mark.parametrize("ops, steps", [(OPS[:2], 2), (OPS[:1], 3), (OPS[:2], 3)])
def test_keys_agree_with_graph_isomorphism(ops, steps):
    """Same key if and only if networkx finds the labelled DAGs isomorphic (every node is an output here)."""
    cells = list(CellSpace(ops, steps).raw_cells())
    classes: list[list] = []
    buckets: dict[str, list[list]] = {}  # isomorphic graphs share a Weisfeiler-Lehman hash: compare within one
    for cell in cells:
        graph = _graph(cell)
        bucket = buckets.setdefault(nx.weisfeiler_lehman_graph_hash(graph, node_attr="role", edge_attr="op"), [])
        for members in bucket:
            if nx.is_isomorphic(graph, _graph(members[0]), node_match=lambda a, b: a["role"] == b["role"],
                                edge_match=lambda a, b: a["op"] == b["op"]):
                members.append(cell)
                break
        else:
            bucket.append([cell])
            classes.append(bucket[-1])
    assert len(classes) == CellSpace(ops, steps).counts()["unique"]
    for members in classes:
        assert len({format_key(*canonical(cell)) for cell in members}) == 1


def test_key_of_ignores_labelling_and_edge_order():
    space = CellSpace()
    a = Genotype([("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("dil_conv_3x3", 1)], [2, 3],
                 [("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("dil_conv_3x3", 1)], [2, 3])
    # the two nodes swapped, and the edges of a node in the other order
    b = Genotype([("dil_conv_3x3", 1), ("max_pool_3x3", 0), ("skip_connect", 1), ("sep_conv_3x3", 0)], [2, 3],
                 [("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 1)], [3, 2])
    assert space.key_of(a) == space.key_of(b) == "max3~0+dil3~1|sep3~0+skip~1"
    # a node reading the other one is not interchangeable with it
    c = Genotype([("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("dil_conv_3x3", 2)], [2, 3],
                 [("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("dil_conv_3x3", 2)], [2, 3])
    assert space.key_of(c) != space.key_of(a)


def test_dead_nodes_are_dropped():
    """A node no output depends on is computed but unused: it does not make a new architecture."""
    used = canonical(((( 0, "skip_connect"), (1, "skip_connect")),), (2,))
    with_dead = canonical((((0, "skip_connect"), (1, "skip_connect")), ((0, "max_pool_3x3"), (1, "max_pool_3x3"))),
                          (2,))
    assert used == with_dead


def test_every_key_round_trips_and_builds():
    space = CellSpace()
    architectures = space.enumerate()
    assert len(architectures) == 648
    for key, genotype in itertools.islice(architectures.items(), 0, None, 97):
        assert space.key_of(genotype) == key
        assert space.key_of(json.loads(genotype.to_json())) == key
        GenotypeNetwork(genotype, 1, 10, C=2, layers=3, stem_stride=2)


@pytest.mark.parametrize("genotype, problem", [
    (Genotype([("sep_conv_5x5", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("dil_conv_3x3", 2)], [2, 3],
              [("sep_conv_5x5", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("dil_conv_3x3", 2)], [2, 3]),
     "outside the bench ops"),
    (Genotype([("skip_connect", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("dil_conv_3x3", 2)], [2, 3],
              [("skip_connect", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("dil_conv_3x3", 1)], [2, 3]),
     "reduce cell"),
    (Genotype([("skip_connect", 0), ("skip_connect", 0), ("max_pool_3x3", 0), ("dil_conv_3x3", 2)], [2, 3],
              [("skip_connect", 0), ("skip_connect", 0), ("max_pool_3x3", 0), ("dil_conv_3x3", 2)], [2, 3]),
     "distinct"),
    (Genotype([("skip_connect", 0), ("skip_connect", 1)], [2], [("skip_connect", 0), ("skip_connect", 1)], [2]),
     "1 nodes"),
])
def test_genotypes_outside_the_space_are_one_line_errors(genotype, problem):
    with pytest.raises(DataError, match=problem):
        CellSpace().key_of(genotype)


def test_bad_keys_are_one_line_errors():
    with pytest.raises(DataError, match="not an architecture key"):
        CellSpace().genotype_of("conv~0")
    with pytest.raises(DataError, match="not a canonical"):
        CellSpace().genotype_of("skip~0+sep3~1|max3~0+dil3~1")  # the canonical order is max3... first


# --- the supernet ties its cells --------------------------------------------------------------------
def test_tied_supernet_derives_one_cell():
    torch.manual_seed(0)
    net = SearchNetwork(1, 4, C=2, layers=3, steps=2, multiplier=2, primitives=OPS, tie_cells=True)
    net.alpha_normal.data.normal_()
    net(torch.randn(2, 1, 8, 8)).sum().backward()
    assert net.alpha_reduce.grad is None  # inert: every cell runs the normal cell's weights
    genotype = net.genotype()
    assert genotype.normal == genotype.reduce
    CellSpace().key_of(genotype)
    child = net.most_likely_child()  # the reduction cells are pruned to the normal cell's argmax ops too
    kept = [int(bundle.active.sum()) for cell in child.cells for bundle in cell.bundles]
    assert kept == [4, 1] * 3


@pytest.mark.parametrize("algorithm", ["fednas", "feddsnas", "fedmetanas", "fedrlnas"])
def test_every_method_searches_the_bench_space(tmp_path, algorithm):
    """A one-round search of each method in search_space=bench derives a genotype with a key."""
    cfg = compose_config("search", tmp_path, [f"algorithm={algorithm}", "search_space=bench", "logger=none",
                                              "federation.rounds=1"])
    result = run_search(cfg)
    genotype = Genotype.load(Path(cfg.paths.output_dir) / "genotype.json")
    assert genotype.normal == genotype.reduce
    key = CellSpace().key_of(Path(cfg.paths.output_dir) / "genotype.json")
    assert key in CellSpace().enumerate()
    assert 0.0 <= result["global_test_acc"] <= 1.0


# --- training -----------------------------------------------------------------------------------------
TINY_SPEC = spec_with(BuildSpec(dataset="synthetic", num_clients=3, seeds=(0, 1)), rounds=2, clients_per_round=2,
                      local_steps=2, batch_size=8, C=2)


def test_training_is_deterministic_per_architecture_seed_and_split():
    dataset = bench_build.load_dataset("synthetic")
    data = build_split(dataset, SplitSpec("dir0.1", num_clients=3))
    genotype = CellSpace().genotype_of("max3~0+dil3~1|sep3~0+skip~1")
    budget, shape = Budget(rounds=2, clients_per_round=2, local_steps=2, batch_size=8), NetworkShape(C=2)
    first, again = train_fedavg(genotype, data, budget, shape, 0), train_fedavg(genotype, data, budget, shape, 0)
    other = train_fedavg(genotype, data, budget, shape, 1)
    assert first.round_loss == again.round_loss and first.global_acc == again.global_acc
    assert first.round_loss != other.round_loss
    # the order seed apart from the initial weights' (bench_seed_noise --vary): the same seed is no change
    assert train_fedavg(genotype, data, budget, shape, 0, order_seed=0).round_loss == first.round_loss
    assert train_fedavg(genotype, data, budget, shape, 0, order_seed=1).round_loss not in (first.round_loss,
                                                                                           other.round_loss)
    assert first.params == sum(p.numel() for p in GenotypeNetwork(genotype, 1, 4, 2, 3, 3, 2).parameters())
    assert first.flops > 0 and 0 <= first.client_acc_mean <= 1


def test_a_training_without_the_test_pass_validates_the_same_final_model():
    """test=False (random search picks on val): the same training and val accuracy, and no test accuracy."""
    import math

    data = build_split(bench_build.load_dataset("synthetic"), SplitSpec("dir0.1", num_clients=3))
    genotype = CellSpace().genotype_of("max3~0+dil3~1|sep3~0+skip~1")
    budget, shape = Budget(rounds=2, clients_per_round=2, local_steps=2, batch_size=8), NetworkShape(C=2)
    scored = train_fedavg(genotype, data, budget, shape, 0, validate=True)
    unscored = train_fedavg(genotype, data, budget, shape, 0, validate=True, test=False)
    assert unscored.round_loss == scored.round_loss and unscored.val_acc == scored.val_acc
    assert math.isnan(unscored.global_acc) and math.isnan(unscored.client_acc_mean)
    assert unscored.round_global_acc == [] and 0 <= scored.global_acc <= 1


def test_average_last_and_the_fixed_schedule_have_known_answers(monkeypatch):
    """average_last=k: the mean of the last k rounds' models, the last being the final model's accuracy; the
    fixed schedule gives every seed the same clients per round, per_seed draws them from the seed."""
    from federated_nas.bench import train as bench_train

    data = build_split(bench_build.load_dataset("synthetic"), SplitSpec("dir0.1", num_clients=3))
    genotype = CellSpace().genotype_of("max3~0+dil3~1|sep3~0+skip~1")
    one = Budget(rounds=3, clients_per_round=2, local_steps=2, batch_size=8)
    final = train_fedavg(genotype, data, one, NetworkShape(C=2), 0)
    three = train_fedavg(genotype, data, Budget(**{**one.__dict__, "average_last": 3}), NetworkShape(C=2), 0)
    assert len(three.round_global_acc) == 3 and three.round_global_acc[-1] == final.global_acc
    assert three.global_acc == pytest.approx(sum(three.round_global_acc) / 3)
    assert three.round_loss == final.round_loss  # evaluating between rounds changes nothing in the training
    seen = []
    real = bench_train.round_clients
    monkeypatch.setattr(bench_train, "round_clients", lambda seed, *rest: seen.append(seed) or real(seed, *rest))
    train_fedavg(genotype, data, one, NetworkShape(C=2), 5)
    train_fedavg(genotype, data, Budget(**{**one.__dict__, "client_schedule": "per_seed"}), NetworkShape(C=2), 5)
    assert seen == [0, 0, 0, 5, 5, 5]
    with pytest.raises(ConfigError, match="average_last=4 is more than its 3 rounds"):
        Budget(rounds=3, average_last=4)


def test_bad_split_and_budget_are_one_line_errors():
    with pytest.raises(ConfigError, match="dir<alpha>"):
        SplitSpec("dirichlet").partitioner()
    with pytest.raises(ConfigError, match="rounds"):
        Budget(rounds=0)
    with pytest.raises(ConfigError, match="I/N"):
        bench_build.parse_shard("3/3")


# --- the build: resume, shards, finalize, query ------------------------------------------------------------
def test_tiny_build_resumes_and_finalizes(tmp_path, monkeypatch):
    keys = sorted(CellSpace().enumerate())[:3]
    tasks = bench_build.task_list(TINY_SPEC, keys)
    assert len(tasks) == 3 * 2 * 2
    folder = tmp_path / "build"
    # killed after 5 trainings: the 6th raises, the file keeps 5 lines (and a torn line is ignored)
    real, calls = bench_build._run_task, []

    def dies_at_six(task):
        calls.append(task)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(bench_build, "_run_task", dies_at_six)
    with pytest.raises(KeyboardInterrupt):
        bench_build.run_tasks(TINY_SPEC, folder, tasks, progress=False)
    with open(folder / "results.jsonl", "a") as handle:
        handle.write('{"key": "torn')
    assert len(bench_build.read_results(folder)) == 5
    monkeypatch.setattr(bench_build, "_run_task", real)
    assert bench_build.run_tasks(TINY_SPEC, folder, tasks, progress=False) == 7  # the rest, nothing twice
    assert bench_build.run_tasks(TINY_SPEC, folder, tasks, progress=False) == 0
    # a second build of the same results file is refused while the first holds it (it would train the same
    # tasks), with the owner's pid; a shard's own file is another file
    with bench_build.writing(folder / "results.jsonl"):
        with pytest.raises(ConfigError, match=rf"being written by another build \(pid {os.getpid()}\)"):
            bench_build.run_tasks(TINY_SPEC, folder, tasks, progress=False)
        assert bench_build.run_tasks(TINY_SPEC, folder, tasks, "results-0of2.jsonl", progress=False) == 0
    # another budget in the same folder is refused
    with pytest.raises(ConfigError, match="another spec"):
        bench_build.run_tasks(spec_with(TINY_SPEC, rounds=3), folder, tasks, progress=False)
    table_path, sheet = bench_build.finalize(folder, tmp_path / "table" / "tiny.json.gz")
    bench = Bench.load(table_path)
    assert sorted(bench.keys()) == keys and "Spearman" in sheet.read_text()
    # the checksum is verified: one changed byte is refused
    raw = bytearray(table_path.read_bytes())
    raw[-5] ^= 1
    table_path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="does not match its checksum"):
        Bench.load(table_path)


def test_shards_split_the_tasks_and_the_cli_runs(tmp_path, capsys):
    common = ["--dataset", "synthetic", "--num-clients", "3", "--rounds", "1", "--local-steps", "1",
              "--batch-size", "8", "--clients-per-round", "2", "--C", "2", "--out", str(tmp_path / "b"), "--quiet"]
    build_bench.main(common + ["--shard", "0/2", "--limit", "2"])
    build_bench.main(common + ["--shard", "1/2", "--limit", "2"])
    assert sorted(p.name for p in (tmp_path / "b").glob("results*.jsonl")) == ["results-0of2.jsonl", "results-1of2.jsonl"]
    tasks = bench_build.task_list(bench_build.BuildSpec.from_dict(json.loads((tmp_path / "b" / "spec.json").read_text())))
    assert set(bench_build.read_results(tmp_path / "b")) == set(tasks[0::2][:2] + tasks[1::2][:2])
    last = tasks[-1][0]  # --first: that architecture's splits x seeds before the rest
    build_bench.main(common[:-3] + ["--out", str(tmp_path / "f"), "--quiet", "--first", last, "--limit", "6"])
    assert {key for key, _, _ in bench_build.read_results(tmp_path / "f")} == {last}
    stats = build_bench.main(common[:-3] + ["--out", str(tmp_path / "p"), "--quiet", "--pilot", "3"])
    assert stats["dir0.1"]["architectures"] == 3 and "spearman_seeds" in stats["dir0.1"]
    pilot = next((tmp_path / "p").glob("pilot-*"))
    reported = build_bench.main(["--report", str(pilot)])[str(pilot)]  # read back, nothing retrained
    assert reported["dir0.1 global_acc"]["mean"] == stats["dir0.1"]["mean"]
    assert reported["dir0.1 client_acc_mean"]["architectures"] == 3
    with pytest.raises(SystemExit):
        build_bench.main(common + ["--shard", "2/2"])
    assert "error: --shard" in capsys.readouterr().err


def _hand_table(tmp_path: Path) -> Path:
    """Three architectures, two seeds, one split, with accuracies chosen so every answer is by hand."""
    accs = {"max3~0+max3~1|max3~0+max3~1": [0.50, 0.60], "skip~0+skip~1|skip~0+skip~1": [0.70, 0.70],
            "sep3~0+sep3~1|sep3~0+sep3~1": [0.80, 0.90]}
    table = {"format": "fednas-bench/1", "name": "hand",
             "space": {"primitives": list(OPS), "steps": 2, "raw": 768, "unique": 648},
             "spec": {}, "splits": ["dir0.1"], "seeds": [0, 1], "columns": ["global_acc", "client_acc_mean"],
             "architectures": {key: {"params": 100 * (i + 1), "flops": 1000 * (i + 1),
                                     "dir0.1": {"global_acc": a, "client_acc_mean": [0.5, 0.7]}}
                               for i, (key, a) in enumerate(accs.items())}}
    return bench_build.write_table(table, tmp_path / "hand.json.gz")


def test_query_has_known_answers(tmp_path):
    bench = Bench.load(_hand_table(tmp_path))
    entry = bench.query("max3~0+max3~1|max3~0+max3~1", "dir0.1")
    assert entry.mean == pytest.approx(0.55) and entry.std == pytest.approx(0.0707107, abs=1e-6)
    assert entry.percentile == pytest.approx(100 / 3) and entry.regret == pytest.approx(0.30)
    assert entry.client_acc_mean == pytest.approx(0.6) and entry.params == 100 and entry.flops == 1000
    best = bench.best("dir0.1")
    assert best.key == "sep3~0+sep3~1|sep3~0+sep3~1" and best.percentile == 100.0 and best.regret == 0.0
    assert bench.percentile_of(0.70, "dir0.1") == pytest.approx(200 / 3)
    assert bench.percentile_of(0.10, "dir0.1") == 0.0
    # a genotype, in any labelling, answers as its key does
    genotype = Genotype([("skip_connect", 1), ("skip_connect", 0)] * 2, [3, 2],
                        [("skip_connect", 0), ("skip_connect", 1)] * 2, [2, 3])
    assert bench.query(genotype, "dir0.1").mean == pytest.approx(0.70)
    with pytest.raises(DataError, match="not in this table"):
        bench.query("dil3~0+dil3~1|dil3~0+dil3~1", "dir0.1")
    with pytest.raises(DataError, match="split 'iid'"):
        bench.query("max3~0+max3~1|max3~0+max3~1", "iid")


def test_missing_checksum_is_refused(tmp_path):
    path = _hand_table(tmp_path)
    Path(str(path) + ".sha256").unlink()
    with pytest.raises(DataError, match="no checksum file"):
        Bench.load(path)
    assert len(Bench.load(path, verify=False)) == 3
    json.loads(gzip.decompress(path.read_bytes()))  # plain gzip'd JSON, readable without this code


def test_ranking_stats_report_the_reliability_of_the_seed_mean():
    """Two seeds in exactly reversed order: r = -1, no reliability. Three seeds of four architectures, the middle
    one swapping the last two (Spearman 1 - 6 * 2 / (4 * 15) = 0.8 against each other seed, 1 between the
    others): mean r = 13/15, reliability of the 3-seed mean 3 r / (1 + 2 r) = 39/41."""
    reversed_seeds = bench_build.ranking_stats({"a": [0.1, 0.3], "b": [0.2, 0.2], "c": [0.3, 0.1]})
    assert reversed_seeds["spearman_seeds"] == pytest.approx(-1.0)
    assert reversed_seeds["mean_reliability"] != reversed_seeds["mean_reliability"]  # nan: undefined at r = -1
    three = bench_build.ranking_stats({"a": [1, 1, 1], "b": [2, 2, 2], "c": [3, 4, 3], "d": [4, 3, 4]})
    assert three["spearman_seeds"] == pytest.approx(0.8)
    assert three["spearman_seed_pairs_mean"] == pytest.approx(13 / 15)
    assert three["mean_reliability"] == pytest.approx(39 / 41)


def test_the_datasheet_says_where_each_splits_best_stands_on_the_other():
    """dir's best, b (0.7), has 0.6 on iid: 1 of 3 at most that, percentile 33.3, regret 0.9 - 0.6; iid's best, a,
    has 0.5 on dir: 33.3, regret 0.2; the top 5% of 3 is 1 architecture, a different one per split."""
    from federated_nas.bench.datasheet import split_transfer

    archs = {"a": {"dir": {"global_acc": [0.5]}, "iid": {"global_acc": [0.9]}},
             "b": {"dir": {"global_acc": [0.7]}, "iid": {"global_acc": [0.6]}},
             "c": {"dir": {"global_acc": [0.6]}, "iid": {"global_acc": [0.8]}}}
    assert split_transfer(archs, ["dir", "iid"])[2:] == [
        "- dir's best, `b`, stands at percentile 33.3 on iid (regret 0.3000).",
        "- iid's best, `a`, stands at percentile 33.3 on dir (regret 0.2000).",
        "- dir and iid share 0 of their top 1."]


def test_the_committed_build_is_whole_and_of_one_spec():
    """benchmarks/fednas_bench/build, committed as it grows across sessions: every line a whole result of one
    of its spec's tasks, trained to that spec, none twice, so what it finalizes to is what the spec says."""
    folder = ROOT / "benchmarks" / "fednas_bench" / "build"
    spec = BuildSpec.from_dict(json.loads((folder / "spec.json").read_text()))
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    tasks = [(r["key"], r["split"], r["seed"]) for r in records]
    assert len(set(tasks)) == len(tasks) and set(tasks) <= set(bench_build.task_list(spec))
    assert {r["spec"] for r in records} == {spec.fingerprint()}
