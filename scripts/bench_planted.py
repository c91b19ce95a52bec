"""Does the search move alpha the right way? The planted-architecture task, per method and round.

    python scripts/bench_planted.py [--methods fednas fedmetanas feddsnas] [--seeds 0 1 2] [--rounds 30]

``dataset=planted_xor`` (its preset: one mixed layer over none, skip_connect, linear, linear_relu; 10
clients, Dirichlet 0.5): only ``linear_relu`` solves XOR, so a search that works puts its probability
there. For every method and seed this prints the weight the evaluated model gives ``linear_relu``
(its relaxation's deterministic weights; a uniform alpha gives 0.25) at a few rounds, whether the
final genotype chose it, and the final accuracy, then the mean and std over seeds. Writes
benchmarks/planted.json. Not a test: ``tests/test_planted.py`` is its fast version.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
PLANTED_OP = "linear_relu"
# enough local work for XOR to be learned at all: 3 local epochs at w learning rate 0.1
BUDGET = ["federation.local_epochs=3", "algorithm.lr=0.1"]


def planted_run(method: str, seed: int, rounds: int, out: Path, extra: list[str] = ()) -> dict:
    """One search on the planted task: the planted op's weight by round, the final genotype and accuracy."""
    from federated_nas.compat import quiet_libraries
    from federated_nas.federation.checkpoint import load_latest_checkpoint
    from federated_nas.runs import run_search

    quiet_libraries()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("search", overrides=[
            "dataset=planted_xor", f"algorithm={method}", f"seed={seed}", f"federation.rounds={rounds}",
            # cluster=local: seconds of client work, less than starting worker processes would cost
            "logger=none", "cluster=local", "plots_every=null", *BUDGET, f"paths.output_dir={out}/{method}-s{seed}",
            f"paths.log_dir={out}", *extra])
    final = run_search(cfg)
    history = load_latest_checkpoint(Path(final["run_dir"]) / "checkpoints")["history"]
    column = history[0]["alpha_probabilities"]["primitives"].index(PLANTED_OP)
    weight = [float(h["alpha_probabilities"]["layers"][0][column]) for h in history]
    return {"method": method, "seed": seed, "planted_weight_by_round": weight,
            "chose_planted_op": json.loads(final["genotype"])["layers"][0] == PLANTED_OP,
            "global_test_acc": final["global_test_acc"]}


def summary(runs: list[dict], rounds: int) -> dict:
    def stats(values: list[float]) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {spread:.3f}"

    checkpoints = sorted({max(rounds // 3, 1), max(2 * rounds // 3, 1), rounds})
    return {f"planted weight, round {r}": stats([run["planted_weight_by_round"][r - 1] for run in runs])
            for r in checkpoints} | {
        "chose linear_relu": f"{sum(run['chose_planted_op'] for run in runs)}/{len(runs)}",
        "global accuracy": stats([run["global_test_acc"] for run in runs])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["fednas", "fedmetanas", "feddsnas"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            runs = [planted_run(method, seed, args.rounds, Path(tmp)) for seed in args.seeds]
            results[method] = {"summary": summary(runs, args.rounds), "runs": runs}
            print(method, json.dumps(results[method]["summary"], ensure_ascii=False))
    out = ROOT / "benchmarks" / "planted.json"
    out.write_text(json.dumps({"rounds": args.rounds, "budget": BUDGET, "results": results}, indent=1,
                              ensure_ascii=False) + "\n")
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
