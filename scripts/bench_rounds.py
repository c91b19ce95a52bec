"""Round overhead and scaling: wall time of a round's client work against the clients' own compute.

Runs FedNAS rounds on Fashion-MNIST (the CPU preset's supernet) with evaluation off, and reports
round_train_seconds / client_compute_seconds (the loop's overhead: Trainer set-up, state copies,
aggregation) and the round time for 5, 10 and 20 clients; the round time of 10 clients against the
number of worker processes (``cluster=multiprocess``); then FedMetaNAS' bytes per round before and after
pruning. Appends to benchmarks/results.json and benchmarks/README.md.

    python scripts/bench_rounds.py [--clients 5 10 20] [--workers 1 2] [--rounds 2] [--local-batches 5]
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


def run_history(name: str, overrides: list[str], tmp: Path) -> list[dict]:
    """The per-round history of a search run with evaluation off."""
    from federated_nas.compat import quiet_libraries
    from federated_nas.federation.checkpoint import load_latest_checkpoint
    from federated_nas.runs import run_search

    quiet_libraries()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("search", overrides=[
            # in-process unless the overrides say otherwise: the overhead ratio is of clients run in turn
            "logger=none", "cluster=local", "federation.client_fraction=1.0", "federation.eval_every=1000",
            "federation.client_eval_every=1000", "plots_every=0",
            f"paths.output_dir={tmp}/bench_rounds/{name}", f"paths.log_dir={tmp}", *overrides,
        ])
    run_search(cfg)
    return load_latest_checkpoint(Path(tmp) / "bench_rounds" / name / "checkpoints")["history"]


def measure_pruning(tmp: Path, clients: int = 5, rounds: int = 4) -> dict:
    """FedMetaNAS bytes per client and round before and after its pruning (half-way through the rounds).

    The threshold is the uniform weight 1/8, so every op the short search has pushed below
    uniform goes (about half): the point is the traffic of a pruned supernet, not search quality.
    """
    history = run_history("pruning", ["algorithm=fedmetanas", f"federation.num_clients={clients}",
                                      f"federation.rounds={rounds}", "federation.local_batches=2",
                                      "algorithm.pruning.at=[0.5]", "algorithm.pruning.threshold=0.125"], tmp)
    first, last = history[0], history[-1]
    return {"clients": clients, "rounds": rounds, "prune_threshold": 0.125,
            "pruned_ops": int(sum(h.get("pruned_ops", 0) for h in history)),
            "bytes_per_client_before": first["bytes_sent"] / first["clients"],
            "bytes_per_client_after": last["bytes_sent"] / last["clients"],
            "supernet_params_before": first["supernet_params"], "supernet_params_after": last["supernet_params"]}


def measure(num_clients: int, rounds: int, local_batches: int, tmp: Path) -> dict:
    history = run_history(str(num_clients), [f"federation.num_clients={num_clients}", f"federation.rounds={rounds}",
                                             f"federation.local_batches={local_batches}"], tmp)
    train = sum(h["round_train_seconds"] for h in history)
    compute = sum(h["client_compute_seconds"] for h in history)
    return {"clients": num_clients, "rounds": rounds, "local_batches": local_batches,
            "round_train_seconds_mean": train / len(history), "client_compute_seconds_mean": compute / len(history),
            "overhead_ratio": train / compute}


def measure_workers(workers: int, num_clients: int, rounds: int, local_batches: int, tmp: Path) -> dict:
    """Round wall time with the clients spread over ``workers`` gloo worker processes."""
    history = run_history(f"workers{workers}", [
        "cluster=multiprocess", f"cluster.backend.workers={workers}", f"federation.num_clients={num_clients}",
        f"federation.rounds={rounds}", f"federation.local_batches={local_batches}"], tmp)
    train = [h["round_train_seconds"] for h in history[1:] or history]  # the first round includes worker start-up
    return {"workers": workers, "clients": num_clients, "round_train_seconds_mean": sum(train) / len(train),
            "client_compute_seconds_mean": sum(h["client_compute_seconds"] for h in history) / len(history)}


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-batches", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(k, args.rounds, args.local_batches, Path(tmp)) for k in args.clients]
        scaling = [measure_workers(w, 10, args.rounds + 1, args.local_batches, Path(tmp)) for w in args.workers]
        pruning = measure_pruning(Path(tmp))
    results_path = OUT / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["rounds"] = {"command": "python " + " ".join(sys.argv), "cores": os.cpu_count(), "rows": rows}
    results["pruning"] = pruning
    results["workers"] = scaling
    OUT.mkdir(exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2))
    lines = ["| clients | round client work (s) | sum of client compute (s) | overhead ratio |", "|---|---|---|---|"]
    lines += [f"| {r['clients']} | {r['round_train_seconds_mean']:.2f} | {r['client_compute_seconds_mean']:.2f} | "
              f"{r['overhead_ratio']:.3f} |" for r in rows]
    lines += ["", f"10 clients spread over worker processes (`cluster=multiprocess`, {os.cpu_count()} cores; round "
              "time after the first round, which includes starting the workers):", "",
              "| worker processes | round client work (s) | sum of client compute (s) |", "|---|---|---|"]
    lines += [f"| {r['workers']} | {r['round_train_seconds_mean']:.2f} | {r['client_compute_seconds_mean']:.2f} |"
              for r in scaling]
    lines += ["", f"FedMetaNAS traffic, {pruning['clients']} clients, {pruning['rounds']} rounds, pruning half-way at "
              f"threshold {pruning['prune_threshold']} ({pruning['pruned_ops']} ops removed):", "",
              "| | supernet parameters | bytes sent per client per round |", "|---|---|---|",
              f"| before pruning | {pruning['supernet_params_before']:,} | {pruning['bytes_per_client_before']:,.0f} |",
              f"| after pruning | {pruning['supernet_params_after']:,} | {pruning['bytes_per_client_after']:,.0f} |"]
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
