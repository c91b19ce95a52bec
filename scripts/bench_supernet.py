"""Supernet search-step throughput: the batched supernet against the op-by-op DARTS reference.

Both are timed in the same process, alternating, on the same weights and batch, so the ratio
is meaningful on a shared, noisy machine even when the absolute numbers drift.
Writes benchmarks/results.json and benchmarks/README.md.

    python scripts/bench_supernet.py [--repeats 3] [--settings small paper]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from federated_nas.search_space.reference import ReferenceSearchNetwork
from federated_nas.search_space.supernet import SearchNetwork

SETTINGS = {  # name -> (C, layers, image size, channels, batch)
    "small": (8, 5, 28, 3, 64),
    "paper": (16, 8, 32, 3, 64),
}
OUT = Path(__file__).resolve().parents[1] / "benchmarks"


def step_seconds(model, x, y, optimizer) -> float:
    started = time.perf_counter()
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    return time.perf_counter() - started


def measure(setting: str, repeats: int) -> dict:
    C, layers, size, channels, batch = SETTINGS[setting]
    torch.manual_seed(0)
    fast = SearchNetwork(channels, 10, C=C, layers=layers)
    reference = ReferenceSearchNetwork(fast)
    x, y = torch.randn(batch, channels, size, size), torch.randint(0, 10, (batch,))
    models = {"fast": fast, "reference": reference}
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    times = {k: [] for k in models}
    for name in models:  # warm-up: first steps allocate and pick kernels
        step_seconds(models[name], x, y, optimizers[name])
    for _ in range(repeats):
        for name in models:  # alternate, so drift on a shared machine hits both alike
            times[name].append(step_seconds(models[name], x, y, optimizers[name]))
    best = {k: min(v) for k, v in times.items()}
    return {
        "setting": setting, "C": C, "layers": layers, "image_size": size, "batch": batch,
        "fast_seconds_per_step": best["fast"], "reference_seconds_per_step": best["reference"],
        "fast_samples_per_second": batch / best["fast"], "reference_samples_per_second": batch / best["reference"],
        "speedup": best["reference"] / best["fast"], "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    command = "python " + " ".join(sys.argv)
    results = [measure(s, args.repeats) for s in args.settings]
    OUT.mkdir(exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"machine": machine, "command": command, "results": results}, indent=2))
    lines = ["# Benchmarks", "", f"Machine: {machine}. Command: `{command}` (also `make bench`).", "",
             "Forward + backward + SGD step of the whole search network, best of the repeats, both paths "
             "alternating in one process on the same weights and batch.", "",
             "| setting | C | layers | input | batch | reference (samples/s) | fast (samples/s) | speedup |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['setting']} | {r['C']} | {r['layers']} | {r['image_size']}x{r['image_size']}x3 | "
                     f"{r['batch']} | {r['reference_samples_per_second']:.1f} | {r['fast_samples_per_second']:.1f} | "
                     f"{r['speedup']:.2f}x |")
    (OUT / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
