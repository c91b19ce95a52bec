"""Time to an accuracy: when each run's curve first reached a target, over seeds (issue 32's time to 80%).

    python scripts/time_to_accuracy.py logs/search/runs/<run> [more run dirs] --target 0.8
    python scripts/time_to_accuracy.py --run --seeds 0,1,2 --out logs/tta [overrides]   # run the default command first
    python scripts/time_to_accuracy.py --run --search /tmp/before/src/search.py ...     # an earlier checkout's, for a before

``--run`` runs ``src/search.py seed=<s> logger=none [overrides]`` (the arguments with ``=``) for each seed, one after the other (alone on
the machine, for timings), into ``--out/seed<s>``, then reads them. Per run: the round and loop seconds at which
the accuracy curve (the sampled global test evaluation) first reached the target, the final full-test accuracy
and the loop's total; then mean ± std over the runs. Loop seconds exclude start-up (``elapsed_seconds``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from federated_nas.cli import one_line_errors
from federated_nas.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("items", nargs="*", metavar="RUN_DIR_OR_OVERRIDE",
                        help="finished search run dirs; with --run, Hydra overrides (key=value) for the runs")
    parser.add_argument("--target", type=float, default=0.8, help="accuracy to reach (default 0.8)")
    parser.add_argument("--run", action="store_true", help="run src/search.py per seed first")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1, 2],
                        help="with --run: comma-separated, e.g. 0,1,2")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "time_to_accuracy")
    parser.add_argument("--search", type=Path, default=ROOT / "src" / "search.py",
                        help="with --run: the entry point to run, e.g. a git worktree's at an earlier commit (it "
                             "imports the package beside it)")
    parser.add_argument("--json", type=Path, help="also write the rows and the summary here")
    args = parser.parse_args(argv)
    is_override = [("=" in item or item[:1] in "~+") for item in args.items]
    args.overrides = [item for item, flag in zip(args.items, is_override) if flag]
    args.run_dirs = [Path(item) for item, flag in zip(args.items, is_override) if not flag]
    if args.overrides and not args.run:
        parser.error(f"overrides ({' '.join(args.overrides)}) are for --run")
    if args.run and not args.search.is_file():
        parser.error(f"--search {args.search}: no such file")
    return args


def run_seeds(args: argparse.Namespace) -> list[Path]:
    dirs = []
    for seed in args.seeds:
        run_dir = args.out / f"seed{seed}"
        command = [sys.executable, str(args.search), f"seed={seed}", "logger=none", *args.overrides,
                   f"hydra.run.dir={run_dir}"]
        print(" ".join(command[1:]), flush=True)
        if subprocess.run(command, check=False).returncode:
            raise DataError(f"the run of seed {seed} failed; its log is in {run_dir}")
        dirs.append(run_dir)
    return dirs


def row(run_dir: Path, target: float) -> dict:
    from federated_nas.federation.checkpoint import read_run_checkpoint
    from federated_nas.tracking.run_record import time_to_accuracy

    history = read_run_checkpoint(run_dir).get("history") or []
    if not history:
        raise DataError(f"{run_dir}'s last checkpoint holds no round history")
    reached = time_to_accuracy(history, target)
    return {"run_dir": str(run_dir), "round": None if reached is None else reached[0],
            "seconds": None if reached is None else reached[1], "rounds": len(history),
            "final_acc": history[-1].get("global_test_acc"), "loop_seconds": history[-1].get("elapsed_seconds")}


def mean_std(values: list[float]) -> str:
    from federated_nas.tracking.tuning import mean_std as formatted

    return formatted(values) if values else "-"


@one_line_errors
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    dirs = [*args.run_dirs, *(run_seeds(args) if args.run else [])]
    if not dirs:
        raise DataError("name run dirs, or --run to run the seeds first")
    rows = [row(run_dir, args.target) for run_dir in dirs]
    print(f"| run | round reaching {100 * args.target:g}% | loop s then | final acc (%) | loop s in all |")
    print("|---|---|---|---|---|")
    for r in rows:
        reached = "never" if r["round"] is None else str(r["round"] + 1)
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
        print(f"| {r['run_dir']} | {reached} | {seconds} | {100 * r['final_acc']:.2f} | {r['loop_seconds']:.0f} |")
    summary = {"target": args.target, "reached": sum(r["seconds"] is not None for r in rows), "runs": len(rows),
               "seconds": mean_std([r["seconds"] for r in rows if r["seconds"] is not None]),
               "final_acc": mean_std([100 * r["final_acc"] for r in rows]),
               "loop_seconds": mean_std([r["loop_seconds"] for r in rows])}
    print(f"reached in {summary['reached']} of {summary['runs']} runs; loop seconds to it {summary['seconds']}; "
          f"final accuracy {summary['final_acc']}%; loop seconds in all {summary['loop_seconds']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    return {"rows": rows, "summary": summary}


if __name__ == "__main__":
    main()
