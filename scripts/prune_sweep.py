"""How far a finished run's supernet can be pruned: ops removed, size and accuracy per pruning threshold.

    python scripts/prune_sweep.py <search run dir> --thresholds 0.01 0.03 0.05 0.08 [--on val|test]

Loads the run's last global model at its final temperature and, for each threshold, prunes a copy
exactly as the server's ``pruning`` schedule would at the last round (``SearchNetwork.prune``: every
op and input combination whose weight is under the threshold leaves, each edge keeping its
strongest op) and evaluates it. ``--on val`` (the default) scores on the union of the clients'
holdout splits, or their val splits where the run held none out: a threshold chosen there is
chosen without the test set. ``--on test`` scores on the global test set. ``params`` counts what the
run logs as ``supernet_params``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from federated_nas.cli import one_line_errors
from federated_nas.errors import ConfigError
from federated_nas.federation.evaluation import evaluate
from federated_nas.federation.validation import finished_run, scoring_split
from federated_nas.search_space.network import count_parameters
from federated_nas.search_space.supernet import SearchNetwork


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished search run's folder (config.yaml and checkpoints/)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.01, 0.02, 0.03, 0.05, 0.08])
    parser.add_argument("--on", choices=("val", "test"), default="val",
                        help="val: the clients' holdout (or val) splits; test: the global test set")
    parser.add_argument("--batch-size", type=int, default=500)
    return parser.parse_args(argv)


@one_line_errors
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if any(not 0 < t < 1 for t in args.thresholds):
        raise ConfigError(f"--thresholds must lie in (0, 1), got {args.thresholds}")
    run = finished_run(args.run_dir)
    if not isinstance(run.model, SearchNetwork):
        raise ConfigError(f"{args.run_dir}: algorithm {run.algorithm.name} has no supernet to prune")
    scored_on, split = scoring_split(run.data) if args.on == "val" else ("test", run.data.global_test)
    report = {"run_dir": str(args.run_dir), "scored_on": scored_on, "samples": len(split),
              "temperature": float(run.model.relaxation.temperature), "unpruned": {
                  "params": count_parameters(run.model), "accuracy": evaluate(run.model, split, args.batch_size)[0]},
              "thresholds": []}
    for threshold in sorted(args.thresholds):
        pruned = copy.deepcopy(run.model)
        removed = pruned.prune(threshold)
        report["thresholds"].append({"threshold": threshold, "pruned_ops": removed["ops"],
                                     "pruned_combinations": removed["combinations"], "params": count_parameters(pruned),
                                     "accuracy": evaluate(pruned, split, args.batch_size)[0]})
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
