"""Build the tabular federated NAS benchmark: every architecture of search_space=bench trained with FedAvg.

    python scripts/build_bench.py --pilot 50 --workers 2 --rounds 20 --local-steps 10   # size the budget first
    python scripts/build_bench.py --workers 2 [--rounds R --local-steps S ...]          # the build; resumes
    python scripts/build_bench.py --workers 2 --first KEY [KEY ...]                     # these architectures first
    python scripts/build_bench.py --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT  # one SLURM array task
    python scripts/build_bench.py --finalize                                            # the committed table

Results go to --out (default logs/bench/<fingerprint of the spec>), one JSON line per (architecture,
split, seed); rerunning the same command skips what is there, so a killed build resumes where it
stopped. --finalize writes benchmarks/fednas_bench/<name>.json.gz, its .sha256 and a datasheet
<name>.md from every results file in --out. docs/bench.md has the plan and the measured costs.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from federated_nas.cli import one_line_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--pilot", type=int, metavar="N", help="train N random architectures x the seeds and print "
                      "the seed-vs-seed Spearman and the top-5%% vs median gap (for sizing the budget)")
    what.add_argument("--finalize", action="store_true", help="write the table, its checksum and its datasheet")
    what.add_argument("--report", type=Path, nargs="+", metavar="FOLDER",
                      help="the ranking stats of build or pilot folders as they stand (nothing is trained)")
    parser.add_argument("--out", type=Path, help="the build folder (default logs/bench/<spec fingerprint>)")
    parser.add_argument("--table", type=Path, default=Path("benchmarks/fednas_bench/fmnist_bench.json.gz"),
                        help="--finalize: the table to write")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (one thread each)")
    parser.add_argument("--shard", default="0/1", help="I/N: train every N-th task from the I-th (a SLURM array)")
    parser.add_argument("--limit", type=int, help="train at most this many of the remaining tasks (a session's share)")
    parser.add_argument("--first", nargs="+", default=[], metavar="KEY",
                        help="architectures to train before the rest (those searches picked: scored before the build ends)")
    parser.add_argument("--data-dir", default=os.environ.get("PROJECT_ROOT", ".") + "/data")
    parser.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist, or synthetic (a smoke test)")
    parser.add_argument("--splits", help="comma-separated: dir<alpha> or iid (default dir0.1,iid; pilot: dir0.1)")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2; pilot: 0 1)")
    parser.add_argument("--num-clients", type=int)
    for name in ("rounds", "clients_per_round", "local_steps", "batch_size", "average_last", "C", "layers", "stem_stride"):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=int)
    for name in ("lr", "lr_min", "momentum", "weight_decay"):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=float)
    parser.add_argument("--test-samples", type=int, help="global test images to score on (default all)")
    parser.add_argument("--client-schedule", choices=("fixed", "per_seed"),
                        help="the clients of each round: the same for every seed (default) or drawn per seed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def spec_from_args(args: argparse.Namespace):
    from federated_nas.bench.build import BuildSpec, spec_with

    splits = tuple(args.splits.split(",")) if args.splits else (("dir0.1",) if args.pilot else None)
    spec = spec_with(BuildSpec(), dataset=args.dataset, splits=splits,
                     seeds=tuple(args.seeds) if args.seeds else ((0, 1) if args.pilot else None),
                     num_clients=args.num_clients,
                     rounds=args.rounds, clients_per_round=args.clients_per_round, local_steps=args.local_steps,
                     batch_size=args.batch_size, lr=args.lr, lr_min=args.lr_min, momentum=args.momentum,
                     weight_decay=args.weight_decay, test_samples=args.test_samples,
                     client_schedule=args.client_schedule, average_last=args.average_last, C=args.C,
                     layers=args.layers, stem_stride=args.stem_stride)
    for split in spec.splits:
        spec.split(split).partitioner()  # a bad split name fails here, before any worker starts
    return spec


def print_report(folder: Path, stats: dict[str, dict]) -> dict[str, dict]:
    for name, s in stats.items():
        print(f"{folder.name} {name}: {s['architectures']} architectures, Spearman seeds "
              f"{s.get('spearman_seeds', float('nan')):.3f}, mean |seed diff| {s.get('abs_seed_diff_mean', float('nan')):.4f}, "
              f"top 5% - median {s.get('top5pct_minus_median', float('nan')):.4f}, mean {s.get('mean', float('nan')):.4f}")
    return stats


@one_line_errors
def main(argv: list[str] | None = None) -> dict:
    from federated_nas.bench import build
    from federated_nas.errors import ConfigError, DataError

    args = parse_args(argv)
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.finalize:
        if args.out is None:
            raise ConfigError("--finalize needs --out <build folder>")
        table, sheet = build.finalize(args.out, args.table)
        print(f"wrote {table}, {table}.sha256 and {sheet}")
        return {"table": str(table)}
    if args.report:
        return {str(folder): print_report(folder, build.report(folder)) for folder in args.report}
    spec = spec_from_args(args)
    out = args.out or Path("logs/bench") / spec.fingerprint()
    if args.pilot:
        stats = build.run_pilot(spec, out, args.pilot, args.workers, args.data_dir, progress=not args.quiet)
        print(json.dumps(stats, indent=2))
        for split, s in stats.items():
            verdict = "ranks" if s.get("spearman_seeds", 0) >= 0.7 else "does NOT rank (Spearman < 0.7)"
            print(f"{split}: Spearman seeds {s.get('spearman_seeds', float('nan')):.3f}, top 5% - median "
                  f"{s.get('top5pct_minus_median', float('nan')):.4f} vs mean |seed diff| "
                  f"{s.get('abs_seed_diff_mean', float('nan')):.4f}, {s['seconds_per_training']:.1f} s/training: "
                  f"this budget {verdict}")
        return stats
    index, count = build.parse_shard(args.shard)
    tasks = build.task_list(spec)[index::count]
    first = {spec.space.key_of(spec.space.genotype_of(key)) for key in args.first}  # canonical; bad keys: one line
    tasks.sort(key=lambda task: task[0] not in first)  # stable: the rest keep their shuffled order
    done = build.read_results(out) if out.is_dir() else {}
    todo = [task for task in tasks if task not in done]
    if args.limit is not None:
        if args.limit < 0:
            raise DataError(f"--limit must be >= 0, got {args.limit}")
        tasks = [task for task in tasks if task in done] + todo[:args.limit]
    name = "results.jsonl" if count == 1 else f"results-{index}of{count}.jsonl"
    trained = build.run_tasks(spec, out, tasks, name, args.workers, args.data_dir, progress=not args.quiet)
    print(f"{out}: trained {trained}, {len(build.read_results(out))} results in all; "
          f"finalize: python scripts/build_bench.py --finalize --out {out}")
    return {"out": str(out), "trained": trained}


if __name__ == "__main__":
    main()
