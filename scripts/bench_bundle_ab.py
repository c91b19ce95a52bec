"""A change to the supernet's EdgeBundle, timed against an earlier commit's in one process.

Separate runs of ``bench_supernet.py`` on a shared machine move the step ratio by 0.2-0.4, more than most
kernel changes gain. Here the EdgeBundle methods of ``--base`` (read with ``git show``) and of the working
tree are swapped into the same model between steps, alternating with the op-by-op reference, on the same
weights and batch, so drift hits all three paths alike.

    python scripts/bench_bundle_ab.py --base e0828e1 [--threads 1 2] [--repeats 5] [--out FILE]
    python scripts/bench_bundle_ab.py --base e0828e1 --method fednas --threads 1   # a method's local step at
                                                                                  # the CPU preset's shapes

The plain step is ``bench_supernet``'s (C=8, 5 layers, 28x28x3, batch 64, forward, backward, SGD); ``--method``
times that method's real local step through Lightning on the default preset's supernet (C=4, 3 layers, stem
stride 2, 1x28x28, batch 32), the step a client of ``python src/search.py`` runs. Prints one JSON row per
thread count (best and mean seconds of each path, their ratios) and appends them to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "src"))

import bench_supernet as bs  # noqa: E402
from federated_nas.search_space import edge_bundle  # noqa: E402

BUNDLE = "src/federated_nas/search_space/edge_bundle.py"
METHODS = ("forward", "_per_edge_term", "_conv_op", "_reduce_skip")  # what a forward of the bundle calls


def bundle_at(commit: str):
    """The EdgeBundle class of ``commit``'s edge_bundle.py, loaded as a separate module."""
    source = subprocess.run(["git", "show", f"{commit}:{BUNDLE}"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    path = Path(tempfile.mkdtemp()) / "edge_bundle_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("edge_bundle_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EdgeBundle


def variants(base_class) -> dict[str, dict]:
    """The working tree's and the base's bundle methods, to swap into the one EdgeBundle class."""
    return {"new": {name: getattr(edge_bundle.EdgeBundle, name) for name in METHODS},
            "base": {name: getattr(base_class, name) for name in METHODS}}


def use(methods: dict) -> None:
    for name, function in methods.items():
        setattr(edge_bundle.EdgeBundle, name, function)


def plain_timer():
    """(paths, one timed step of a path): the plain step, with the op-by-op reference as a third path."""
    models, optimizers, x, y = bs.plain_models("small")
    paths = {"new": "fast", "base": "fast", "reference": "reference"}
    return paths, lambda path: bs.plain_step(models[paths[path]], optimizers[paths[path]], x, y)


def method_timer(method: str):
    """(paths, one timed step of a path): ``method``'s local step at the CPU preset's shapes."""
    algorithm, model, client, batch = bs.setup("preset", method)
    return {"new": "fast", "base": "fast"}, lambda path: min(bs.local_steps(algorithm, model, client, batch, 3))


def measure(base_class, threads: int, repeats: int, method: str | None) -> dict:
    swaps = variants(base_class)
    with bs.torch_threads(threads):
        paths, step = method_timer(method) if method else plain_timer()
        times = {path: [] for path in paths}
        for round_idx in range(repeats + 1):  # the first round warms each path up, untimed
            for path in paths:
                if path in swaps:
                    use(swaps[path])
                seconds = step(path)
                if round_idx:
                    times[path].append(seconds)
        use(swaps["new"])
    best = {path: min(t) for path, t in times.items()}
    mean = {path: sum(t) / len(t) for path, t in times.items()}
    row = {"step": method or "plain (small)", "threads": threads, "onednn_isa": bs.onednn_isa(), "repeats": repeats,
           "best_seconds": best, "mean_seconds": mean, "new_over_base_best": best["base"] / best["new"],
           "new_over_base_mean": mean["base"] / mean["new"]}
    if "reference" in best:
        row.update(speedup_new=best["reference"] / best["new"], speedup_base=best["reference"] / best["base"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit whose EdgeBundle the working tree's is timed against")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--method", choices=bs.METHODS, help="a method's local step at the CPU preset's shapes")
    parser.add_argument("--out", type=Path, help="append the rows to this JSON-lines file")
    args = parser.parse_args()
    base_class = bundle_at(args.base)
    for threads in args.threads:
        row = {"base": args.base, **measure(base_class, threads, args.repeats, args.method),
               "command": "python scripts/bench_bundle_ab.py " + " ".join(sys.argv[1:])}
        print(json.dumps(row))
        if args.out:
            with args.out.open("a") as out:
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
