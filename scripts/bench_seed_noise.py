"""How far apart the training seeds of one benchmark architecture land, per participation schedule.

    OMP_NUM_THREADS=1 python scripts/bench_seed_noise.py --schedule fixed per_seed --seeds 0 1 2 3
    OMP_NUM_THREADS=1 python scripts/bench_seed_noise.py --schedule fixed --vary init order --keys <key>

Trains each architecture with ``bench.train.train_fedavg`` on one split at every seed and prints the
accuracies and their std: the noise a table built with that budget would carry (docs/bench.md, "Sizing
the budget"). A benchmark ranks only where this std is well under the spread between architectures.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

KEYS = ["dil3~0+max3~1|skip~1+sep3~2", "max3~0+skip~1|skip~1+sep3~2"]
# what a seed s changes: train_fedavg's (seed, validate, order_seed)
SEEDS = {"both": lambda s: (s, False, None), "init": lambda s: (s, False, 0), "order": lambda s: (0, False, s)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", nargs="+", default=KEYS)
    parser.add_argument("--schedule", nargs="+", default=["fixed", "per_seed"], choices=("fixed", "per_seed"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--vary", nargs="+", default=["both"], choices=("both", "init", "order"),
                        help="what a seed changes: both (the table's seeds), the initial weights alone (batch order "
                             "of seed 0), or the batch order alone (initial weights of seed 0)")
    parser.add_argument("--split", default="dir0.1")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients-per-round", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--test-samples", type=int, default=2000)
    parser.add_argument("--data-dir", default=os.environ.get("PROJECT_ROOT", ".") + "/data")
    args = parser.parse_args(argv)

    from federated_nas.bench.build import load_dataset
    from federated_nas.bench.space import CellSpace
    from federated_nas.bench.train import Budget, NetworkShape, SplitSpec, build_split, train_fedavg

    data = build_split(load_dataset("fashion_mnist", args.data_dir), SplitSpec(args.split))
    space, result = CellSpace(), {}
    for schedule in args.schedule:
        budget = Budget(rounds=args.rounds, clients_per_round=args.clients_per_round, local_steps=args.local_steps,
                        lr=args.lr, test_samples=args.test_samples, client_schedule=schedule)
        for vary in args.vary:
            for key in args.keys:
                accs = [train_fedavg(space.genotype_of(key), data, budget, NetworkShape(), *SEEDS[vary](seed)).global_acc
                        for seed in args.seeds]
                result[f"{schedule} {vary} {key}"] = accs
                print(f"{schedule:8s} vary {vary:5s} {key}: {', '.join(f'{100 * a:.1f}' for a in accs)} "
                      f"(std {100 * np.std(accs, ddof=1):.1f} points)", flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
