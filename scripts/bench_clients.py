"""Scale in clients: round time and the server's peak memory at 10, 100 and 1,000 clients.

    python scripts/bench_clients.py [--rounds 3] [--methods fednas perfedrlnas] [--settings 100/5 1000/10]
                                    [--cluster local]

Each setting is a fresh `python src/search.py` process on Fashion-MNIST (IID, the CPU preset
supernet, 2 local batches of 32 per client and round, 200 global test images per round), so its
peak resident set (ru_maxrss of that process) is the whole run's. A round's time should grow with
the clients taking part, not with the clients that exist; memory should stay flat in both, except
per-client state (PerFedRLNAS keeps one policy per client that has taken part: the server holds
them in a dict and writes them into every checkpoint). The clients run in the server process
(``--cluster local``) unless told otherwise, so the peak is the server's and a round's time is not
mixed with starting worker processes. Writes benchmarks/clients.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ((10, 5), (100, 5), (1000, 10))  # (clients, sampled per round): the FedMetaNAS paper's 100 / 5


def run(method: str, clients: int, per_round: int, rounds: int, work_dir: Path, cluster: str) -> dict:
    run_dir = work_dir / f"{method}-{clients}"
    command = [sys.executable, str(ROOT / "src" / "search.py"), f"algorithm={method}", f"cluster={cluster}",
               "partition=iid",
               f"federation.num_clients={clients}", f"federation.client_fraction={per_round / clients}",
               f"federation.rounds={rounds}", "federation.local_batches=2", "federation.batch_size=32",
               "federation.global_test_samples=200", f"federation.client_eval_every={rounds}", "plots_every=null",
               "logger=none", f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{method} with {clients} clients failed: {process.stderr.read()[-2000:]}")
    checkpoint_path = run_dir / "checkpoints" / "last.pt"
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    seconds = [entry["round_seconds"] for entry in checkpoint["history"]]
    return {"method": method, "clients": clients, "per_round": per_round, "wall_seconds": round(wall, 1),
            "round_seconds_median": round(statistics.median(seconds), 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024), "clients_with_state": len(checkpoint.get("personal", {})),
            "checkpoint_mib": round(checkpoint_path.stat().st_size / 2**20, 2)}


def setting(text: str) -> tuple[int, int]:
    """``CLIENTS/PER_ROUND`` as a pair of counts."""
    clients, per_round = (int(part) for part in text.split("/"))
    return clients, per_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["fednas", "perfedrlnas"])
    parser.add_argument("--settings", nargs="+", type=setting, default=list(SETTINGS),
                        help="CLIENTS/PER_ROUND pairs (default: 10/5 100/5 1000/10)")
    parser.add_argument("--cluster", default="local", help="the cluster option of the runs")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work_dir:
        for method in args.methods:
            for clients, per_round in args.settings:
                rows.append(run(method, clients, per_round, args.rounds, Path(work_dir), args.cluster))
                print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "benchmarks" / "clients.json"
    out.write_text(json.dumps({"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                               "rounds": args.rounds, "cluster": args.cluster, "command": " ".join(sys.argv),
                               "rows": rows}, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
