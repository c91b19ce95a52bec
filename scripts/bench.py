"""Use the tabular federated NAS benchmark: score a search, look an architecture up, run the baselines.

    python scripts/bench.py score logs/search/runs/<run dir> [more run dirs] [--split dir0.1]
    python scripts/bench.py query 'max3~0+dil3~1|sep3~0+skip~1'       # or a genotype.json
    python scripts/bench.py random-sampling
    python scripts/bench.py random-search --client-steps 1000 --candidates 4 --seeds 0 1 2 --splits dir0.1 iid
    python scripts/bench.py export logs/tune_bench_methods_dir0.1 --out searches.jsonl   # runs -> committable records
    python scripts/bench.py methods searches.jsonl --random-search rs.json      # the methods' table over seeds

``score`` prints the derived architecture's ground truth, percentile and regret, Kendall's tau of the
method's ranking of the space, and the search's cost; it writes bench_score.json into the run dir and
adds the scores (bench/*) to the run's MLflow record. docs/bench.md explains every number.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from federated_nas.cli import one_line_errors

TABLE = Path(__file__).resolve().parents[1] / "benchmarks" / "fednas_bench" / "fmnist_bench.json.gz"
BUILD_SPEC = TABLE.parent / "build" / "spec.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=TABLE, help="a fednas-bench table (default: the committed one)")
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score search runs against the table")
    score.add_argument("run_dirs", nargs="+", type=Path)
    score.add_argument("--split", help="the table's split to score on (default: the run's own partition)")
    score.add_argument("--no-mlflow", action="store_true", help="do not add the scores to the runs' MLflow records")
    score.add_argument("--json", action="store_true", help="print the scores as JSON")
    export = commands.add_parser("export", help="search runs (or a tuning's picks) as records a fresh clone can score")
    export.add_argument("runs", nargs="+", type=Path, help="search run dirs, or scripts/tune.py folders (their picks' "
                                                           "seed runs)")
    export.add_argument("--out", type=Path, required=True, help="the records, as JSON lines")
    methods = commands.add_parser("methods", help="score search records: the methods over seeds, a table per split")
    methods.add_argument("records", nargs="+", type=Path, help="files written by export")
    methods.add_argument("--random-search", nargs="*", type=Path, default=[],
                         help="random-search --out files: rows at those costs")
    methods.add_argument("--out", type=Path, help="write the table (markdown) and every score (JSON beside it)")
    query = commands.add_parser("query", help="the ground truth of an architecture (a key or a genotype.json)")
    query.add_argument("architecture")
    commands.add_parser("random-sampling", help="the expected ground truth of a random genotype, per split")
    search = commands.add_parser("random-search", help="random search at a search's cost, per seed and split")
    search.add_argument("--client-steps", type=int, required=True, help="the cost to match (a search's client steps)")
    search.add_argument("--candidates", type=int, default=4)
    search.add_argument("--halving", action="store_true",
                        help="successive halving: the candidates (a power of 2) in rungs, halved down to 2, each "
                             "rung an equal share of the cost")
    search.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    search.add_argument("--splits", nargs="+", help="default: every split of the table")
    search.add_argument("--data-dir", default=os.environ.get("PROJECT_ROOT", ".") + "/data")
    search.add_argument("--spec", type=Path, default=BUILD_SPEC,
                        help="the build's spec.json, read where the table does not exist yet (its picks are then "
                             "looked up later, by methods)")
    search.add_argument("--out", type=Path, help="write the results as JSON here")
    evolution = commands.add_parser("evolution", help="regularized evolution and random search over the table's "
                                                      "queries (one query = one training of the table)")
    evolution.add_argument("--queries", type=int, nargs="+", default=[5, 10, 25, 50, 100, 200])
    evolution.add_argument("--repeats", type=int, default=50, help="seeds of each search")
    evolution.add_argument("--population", type=int, default=20)
    evolution.add_argument("--sample", type=int, default=5)
    evolution.add_argument("--splits", nargs="+", help="default: every split of the table")
    evolution.add_argument("--out", type=Path, help="write the curves as JSON here, and their table beside it (.md)")
    return parser.parse_args(argv)


def score(args: argparse.Namespace) -> list[dict]:
    from federated_nas.bench import Bench

    bench = Bench.load(args.table)
    scores = [score_run(run_dir, bench, args) for run_dir in args.run_dirs]
    print(json.dumps([s.as_dict() for s in scores], indent=2) if args.json else "\n".join(s.summary() for s in scores))
    return [s.as_dict() for s in scores]


def score_run(run_dir: Path, bench, args: argparse.Namespace):
    """Score one run dir, keep the score in it (bench_score.json) and add it to its MLflow record."""
    from omegaconf import OmegaConf

    from federated_nas.federation.checkpoint import read_run_checkpoint
    from federated_nas.tracking.bench_score import log_score, score_search

    checkpoint = read_run_checkpoint(run_dir)
    result = score_search(run_dir, checkpoint, bench, args.split)
    logged = not args.no_mlflow and log_score(result, OmegaConf.load(run_dir / "config.yaml"),
                                              checkpoint.get("mlflow_run_id"), args.table)
    if not args.no_mlflow and not logged:
        result.notes.append("not logged to MLflow: the run has no MLflow record (logger=none)")
    (run_dir / "bench_score.json").write_text(json.dumps(result.as_dict(), indent=2))
    return result


def run_dirs_of(path: Path) -> list[Path]:
    """A run dir, or a scripts/tune.py folder's picks' seed runs."""
    if not (path / "tuning.json").is_file():
        return [path]
    tuning = json.loads((path / "tuning.json").read_text())
    return [Path(seed["run_dir"]) for method in tuning["methods"].values()
            for _, seed in sorted((method.get("seeds") or {}).items())]


def export(args: argparse.Namespace) -> list[dict]:
    from federated_nas.federation.checkpoint import read_run_checkpoint
    from federated_nas.tracking.bench_score import search_record, write_records

    records = [search_record(run_dir, read_run_checkpoint(run_dir))
               for run_dir in (run for path in args.runs for run in run_dirs_of(path))]
    write_records(records, args.out)
    print(f"{len(records)} search records -> {args.out}")
    return [r.as_dict() for r in records]


def methods(args: argparse.Namespace) -> str:
    from federated_nas.bench import Bench
    from federated_nas.bench.baselines import parameter_count
    from federated_nas.bench.baselines import random_sampling as expected
    from federated_nas.bench.build import BuildSpec
    from federated_nas.errors import DataError
    from federated_nas.tracking.bench_score import method_table, read_records, score_record

    bench = Bench.load(args.table)
    scores = [score_record(record, bench) for path in args.records for record in read_records(path)]
    baselines: dict[str, list] = {}
    for split in sorted({s.split for s in scores}):
        r = expected(bench, split)
        largest = parameter_count(bench, split)
        baselines[split] = [("random genotype (expected)", {"seeds": "-", "accuracy": [r["accuracy"]],
                                                            "percentile": [r["percentile"]], "regret": [r["regret"]]}),
                            ("largest architecture (parameter count)", {
                                "seeds": "-", "accuracy": [largest["accuracy"]], "percentile": [largest["percentile"]],
                                "regret": [largest["regret"]], "tau": [largest["kendall_tau"]], "keys": largest["keys"]})]
    table_spec = BuildSpec.from_dict(bench.table["spec"]).fingerprint() if bench.table.get("spec") else None
    for path in args.random_search:  # its picks looked up here, as the searches' records are
        found = json.loads(path.read_text())
        if table_spec and found.get("spec") not in (None, table_spec):
            raise DataError(f"{path} trained its candidates to build spec {found['spec']}, the table was built to "
                            f"{table_spec}: run random-search again with the table")
        for split, result in found["splits"].items():
            runs, entries = result["runs"], [bench.query(r["picked"], split) for r in result["runs"]]
            baselines.setdefault(split, []).append((
                search_label(found),
                {"accuracy": [e.mean for e in entries], "percentile": [e.percentile for e in entries],
                 "regret": [e.regret for e in entries], "client_steps": runs[0]["client_steps"],
                 "keys": [r["picked"] for r in runs], "megabytes": [r["bytes_communicated"] / 1e6 for r in runs],
                 "minutes": [r["seconds"] / 60 for r in runs]}))
    table = method_table(scores, baselines)
    unique = bench.table["space"].get("unique", len(bench))
    if len(bench) < unique:  # a build read before its end: every rank is within the architectures it holds
        table += (f"\n\nThe table holds {len(bench)} of the space's {unique} architectures: percentile, regret and "
                  "Kendall τ are over those.")
    print(table)
    for note in sorted({f"{s.method}: {note}" for s in scores for note in s.notes}):
        print(f"note: {note}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps([s.as_dict() for s in scores], indent=2))
    return table


def query(args: argparse.Namespace) -> dict:
    from federated_nas.bench import Bench

    bench = Bench.load(args.table)
    entries = {split: bench.query(args.architecture, split) for split in bench.splits}
    for split, e in entries.items():
        print(f"{split}: {e.key} {100 * e.mean:.2f} ± {100 * e.std:.2f}% (seeds {', '.join(f'{100 * a:.2f}' for a in e.accs)}), "
              f"clients {100 * e.client_acc_mean:.2f}%, percentile {e.percentile:.1f}, regret {100 * e.regret:.2f}, "
              f"{e.params:,} params, {e.flops:,} FLOPs")
    return {split: e.__dict__ for split, e in entries.items()}


def random_sampling(args: argparse.Namespace) -> dict:
    from federated_nas.bench import Bench
    from federated_nas.bench.baselines import random_sampling as expected

    bench = Bench.load(args.table)
    result = {split: expected(bench, split) for split in bench.splits}
    for split, r in result.items():
        print(f"{split}: a random genotype scores {100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}%, "
              f"percentile {r['percentile']:.1f}, regret {100 * r['regret']:.2f}, top 5% with p = {r['p_top5pct']:.3f}")
    return result


def search_label(found: dict) -> str:
    """``random search, 4 x 3 rounds`` or ``successive halving, 8/4/2 x 2/4/8 rounds``: a row of the methods' table."""
    if not found.get("halving"):
        return f"random search, {found['candidates']} x {found['rounds_each']} rounds"
    counts = [found["candidates"] >> rung for rung in range(len(found["rounds_each"]))]
    return (f"successive halving, {'/'.join(map(str, counts))} x {'/'.join(map(str, found['rounds_each']))} "
            "rounds")


def random_search(args: argparse.Namespace) -> dict:
    """Random search at a search's cost; its picks are looked up where the table exists (else by ``methods``)."""
    import numpy as np

    from federated_nas.bench import Bench
    from federated_nas.bench.baselines import budget_for_cost, halving_budgets, successive_halving
    from federated_nas.bench.build import BuildSpec, load_dataset
    from federated_nas.bench.train import build_split
    from federated_nas.errors import DataError

    bench = Bench.load(args.table) if args.table.is_file() else None
    if bench is None and not args.spec.is_file():
        raise DataError(f"neither the table {args.table} nor a build spec {args.spec} exists: nothing says the budget")
    spec = BuildSpec.from_dict(bench.table["spec"] if bench else json.loads(args.spec.read_text()))
    budgets = (halving_budgets(args.client_steps, args.candidates, spec.budget) if args.halving
               else [budget_for_cost(args.client_steps, args.candidates, spec.budget)])
    dataset = load_dataset(spec.dataset, args.data_dir)
    result: dict = {"client_steps": args.client_steps, "candidates": args.candidates,
                    "rounds_each": [b.rounds for b in budgets] if args.halving else budgets[0].rounds,
                    "halving": args.halving, "spec": spec.fingerprint(), "splits": {}}
    for split in args.splits or spec.splits:
        data = build_split(dataset, spec.split(split))
        runs = []
        for seed in args.seeds:
            found = successive_halving(spec.space, data, split, args.candidates, budgets, spec.network, seed)
            runs.append(found.as_dict())
            line = f"{split} seed {seed}: {search_label(result)} picked {found.picked}"
            if bench is not None:
                entry = bench.query(found.picked, split)
                runs[-1].update(accuracy=entry.mean, percentile=entry.percentile, regret=entry.regret)
                line += f" ({100 * entry.mean:.2f}%, percentile {entry.percentile:.1f}, regret {100 * entry.regret:.2f})"
            print(f"{line}, {found.seconds:.0f} s")
        result["splits"][split] = {"runs": runs}
        if bench is not None:
            summary = {name: (float(np.mean([r[name] for r in runs])), float(np.std([r[name] for r in runs], ddof=1))
                              if len(runs) > 1 else 0.0) for name in ("accuracy", "percentile", "regret")}
            result["splits"][split]["summary"] = summary
            print(f"{split}: {search_label(result)}: " + ", ".join(f"{name} {mean:.3f} ± {std:.3f}"
                                                         for name, (mean, std) in summary.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


def evolution(args: argparse.Namespace) -> dict:
    from federated_nas.bench import Bench
    from federated_nas.bench.baselines import query_search_curves
    from federated_nas.bench.build import BuildSpec

    bench = Bench.load(args.table)
    budget = BuildSpec.from_dict(bench.table["spec"]).budget if bench.table.get("spec") else None
    per_query = budget.rounds * budget.clients_per_round * budget.local_steps if budget else None
    result: dict = {"client_steps_per_query": per_query, "repeats": args.repeats, "population": args.population,
                    "sample": args.sample, "splits": {}}
    lines = ["| split | queries | client steps | regularized evolution: accuracy (%) / percentile / regret (points) "
             "| random queries: the same |", "|---|---|---|---|---|"]
    for split in args.splits or bench.splits:
        curves = query_search_curves(bench, split, args.queries, args.repeats, args.population, args.sample)
        result["splits"][split] = {method: {str(q): row for q, row in rows.items()} for method, rows in curves.items()}
        for q in args.queries:
            cells = [f"{100 * row['accuracy'][0]:.2f} ± {100 * row['accuracy'][1]:.2f} / {row['percentile'][0]:.1f} ± "
                     f"{row['percentile'][1]:.1f} / {100 * row['regret'][0]:.2f}" for row in (curves[m][q] for m in curves)]
            steps = "-" if per_query is None else f"{q * per_query:,}"
            lines.append(f"| {split} | {q} | {steps} | {cells[0]} | {cells[1]} |")
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return result


@one_line_errors
def main(argv: list[str] | None = None):
    args = parse_args(argv)
    return {"score": score, "query": query, "random-sampling": random_sampling,
            "random-search": random_search, "evolution": evolution,
            "export": export, "methods": methods}[args.command](args)


if __name__ == "__main__":
    main()
