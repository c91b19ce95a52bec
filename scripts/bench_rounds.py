"""Round overhead and scaling: wall time of a round's client work against the clients' own compute.

Runs FedNAS rounds on Fashion-MNIST (the CPU preset's supernet) with evaluation off, and reports
round_train_seconds / client_compute_seconds (the loop's overhead: Trainer set-up, state copies,
aggregation) and the round time for 5, 10 and 20 clients. Appends to benchmarks/results.json.

    python scripts/bench_rounds.py [--clients 5 10 20] [--rounds 2] [--local-batches 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks"


def measure(num_clients: int, rounds: int, local_batches: int, tmp: Path) -> dict:
    from federated_nas.cli import quiet_libraries
    from federated_nas.runs import run_search

    quiet_libraries()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("search", overrides=[
            "logger=none", f"federation.num_clients={num_clients}", f"federation.rounds={rounds}",
            "federation.client_fraction=1.0", f"federation.local_batches={local_batches}",
            "federation.eval_every=1000", "federation.client_eval_every=1000",
            f"paths.output_dir={tmp}/bench_rounds/{num_clients}", f"paths.log_dir={tmp}",
        ])
    run_search(cfg)
    from federated_nas.federation.checkpoint import load_latest_checkpoint

    history = load_latest_checkpoint(Path(tmp) / "bench_rounds" / str(num_clients) / "checkpoints")["history"]
    train = sum(h["round_train_seconds"] for h in history)
    compute = sum(h["client_compute_seconds"] for h in history)
    return {"clients": num_clients, "rounds": rounds, "local_batches": local_batches,
            "round_train_seconds_mean": train / len(history), "client_compute_seconds_mean": compute / len(history),
            "overhead_ratio": train / compute}


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-batches", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(k, args.rounds, args.local_batches, Path(tmp)) for k in args.clients]
    results_path = OUT / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["rounds"] = {"command": "python " + " ".join(sys.argv), "cores": os.cpu_count(), "rows": rows}
    OUT.mkdir(exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2))
    lines = ["| clients | round client work (s) | sum of client compute (s) | overhead ratio |", "|---|---|---|---|"]
    lines += [f"| {r['clients']} | {r['round_train_seconds_mean']:.2f} | {r['client_compute_seconds_mean']:.2f} | "
              f"{r['overhead_ratio']:.3f} |" for r in rows]
    print("\n".join(lines))
    readme = OUT / "README.md"
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    text = text.split("\n## Round overhead")[0].rstrip() + "\n"
    text += ("\n## Round overhead and scaling\n\n"
             f"Command: `{results['rounds']['command']}` (also `make bench`), {os.cpu_count()} cores. FedNAS, CPU preset "
             "supernet on Fashion-MNIST, all clients every round, evaluation off. Overhead ratio = wall time of a "
             "round's client work (Trainer set-up, state copies, aggregation included) / sum of the clients' own "
             "local training loops.\n\n" + "\n".join(lines) + "\n")
    readme.write_text(text)


if __name__ == "__main__":
    main()
