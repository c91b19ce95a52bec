"""Markdown table and normal-cell pictures of the runs of an MLflow experiment.

    python scripts/compare_runs.py [--experiment search] [--filter "tags.dataset = 'fashion_mnist'"]
                                   [--tracking-uri sqlite:///logs/mlflow.db] [--out logs/compare]

Writes <out>/comparison.md and <out>/comparison.png and prints their paths.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from federated_nas.cli import one_line_errors

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="search", help="MLflow experiment name (default: search)")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'logs' / 'mlflow.db'}",
                        help="MLflow tracking URI (default: the project's logs/mlflow.db)")
    parser.add_argument("--filter", default="", help="MLflow search filter, e.g. \"tags.dataset = 'mnist'\"; "
                                                     "empty for all runs")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "compare", help="output folder")
    return parser.parse_args(argv)


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per one-file download is noise
    from federated_nas.tracking.compare import compare_runs  # deferred: mlflow and torch are slow to import

    for path in compare_runs(args.tracking_uri, args.experiment, args.out, args.filter):
        print(path)


if __name__ == "__main__":
    main()
