"""The MLflow UI on the project's store, opened on the runs tables: `make mlflow-ui`.

    python scripts/mlflow_ui.py [--tracking-uri sqlite:///logs/mlflow.db] [--port 5000] [--print-only]

Prints one runs-table URL per experiment (MLflow 3 would otherwise land on its GenAI overview),
then replaces itself with `mlflow ui --workers 1` (MLflow's job runner off: nothing here uses it).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'logs' / 'mlflow.db'}")
    parser.add_argument("--artifact-root", default=str(ROOT / "logs" / "mlartifacts"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--print-only", action="store_true", help="print the URLs, do not start the UI")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from federated_nas.tracking.ui import experiment_urls, ui_command, ui_environment  # mlflow is slow to import

    base = f"http://{args.host}:{args.port}"
    urls = experiment_urls(args.tracking_uri, base)
    if not urls:
        print(f"no runs in {args.tracking_uri} yet (python src/search.py debug=fast logs one); UI at {base}")
    for name, url in urls:
        print(f"{name}: {url}")
    if not args.print_only:
        command = ui_command(args.tracking_uri, args.artifact_root, args.port, args.host)
        os.execvpe(command[0], command, ui_environment())


if __name__ == "__main__":
    main()
