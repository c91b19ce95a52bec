"""Markdown table and pictures of the runs of an MLflow experiment.

    python scripts/compare_runs.py [--experiment search] [--filter "tags.dataset = 'fashion_mnist'"]
                                   [--tracking-uri sqlite:///logs/mlflow.db] [--out logs/compare]
                                   [--kind search|personalization]

--kind search (default, `make compare`): <out>/comparison.md, one line per run sorted by global
accuracy, and <out>/comparison.png, a grid of the runs' normal cells.
--kind personalization (`make compare-personal`, experiment compare_cpu by default there):
<out>/personalization.md, one line per run with algorithm, data setting, global accuracy, local
accuracy mean ± std over clients (after personalization), parameters, wall time and bytes
communicated, and <out>/personalization.png, each run's histogram of per-client local accuracy.
Prints the two paths.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from federated_nas.cli import one_line_errors

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("search", "personalization")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="search", help="MLflow experiment name (default: search)")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'logs' / 'mlflow.db'}",
                        help="MLflow tracking URI (default: the project's logs/mlflow.db)")
    parser.add_argument("--filter", default="", help="MLflow search filter, e.g. \"tags.dataset = 'mnist'\"; "
                                                     "empty for all runs")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "compare", help="output folder")
    parser.add_argument("--kind", choices=KINDS, default="search",
                        help="search: accuracy and cells; personalization: local accuracy, cost, client histograms")
    return parser.parse_args(argv)


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per one-file download is noise
    # deferred: mlflow and torch are slow to import
    from federated_nas.tracking.compare import compare_personalization, compare_runs

    compare = compare_personalization if args.kind == "personalization" else compare_runs
    for path in compare(args.tracking_uri, args.experiment, args.out, args.filter):
        print(path)


if __name__ == "__main__":
    main()
