"""Judging a search at equal size: searched cells against random cells and a hand-designed network.

A search found something only if its cell, trained at the same size and budget as the alternatives,
beats cells drawn at random from the same space (Li & Talwalkar 2019; Yu et al., ICLR 2020). The
comparison is paired by training seed: a searched cell trained at seed s meets the random cells trained
at seed s (same data order and initial draws), which removes the seed's share of the noise. This module
holds the bookkeeping that needs no run (``scripts/evaluate_cells.py`` runs them), so it is tested on
hand-made numbers.
"""

from __future__ import annotations

import statistics
from typing import Any

from omegaconf import DictConfig

from federated_nas.tracking.tuning import mean_std

SEARCHED_METHODS = ("fednas", "fedmetanas", "feddsnas", "fedrlnas")
PARAMETER_FREE = ("skip_connect", "max_pool_3x3", "avg_pool_3x3", "none")  # ops a collapsed search favours


def client_steps(cfg: DictConfig | dict) -> int:
    """Local batches the clients processed over a run: rounds x clients per round x batches per round.

    Each method's step does its own work on a batch (FedNAS a train and a val pass, FedRLNAS one child),
    so this counts data, the budget that is held equal, not FLOPs."""
    fed = cfg["federation"]
    per_round = max(1, round(int(fed["num_clients"]) * float(fed["client_fraction"])))
    return int(fed["rounds"]) * per_round * int(fed["local_epochs"]) * int(fed["local_batches"])


def beaten_fraction(method: dict[int, float], random_cells: dict[int, list[float]]) -> float | None:
    """Of the (method run, random cell) pairs trained at the same seed, the fraction the method's cell wins
    (a tie counts half). ``method``: seed -> accuracy; ``random_cells``: seed -> accuracies. None: no pair."""
    wins = pairs = 0.0
    for seed, accuracy in method.items():
        for other in random_cells.get(seed, []):
            pairs += 1
            wins += 1.0 if accuracy > other else 0.5 if accuracy == other else 0.0
    return None if not pairs else wins / pairs


def verdict(fraction: float | None) -> str:
    """Does the cell beat random cells? Yes only where it wins most pairs; about half is no better than random."""
    if fraction is None:
        return "(no random cells yet)"
    if fraction >= 2 / 3:
        return f"yes ({fraction:.0%} of pairs)"
    if fraction > 1 / 3:
        return f"no better ({fraction:.0%} of pairs)"
    return f"no, worse ({fraction:.0%} of pairs)"


def format_evaluation_table(rows: list[dict[str, Any]], random_cells: dict[int, list[float]]) -> str:
    """Markdown: per row its final model, parameters, global test accuracy over seeds, cost (client steps and
    loop seconds, search plus train) and the fraction of random cells it beats at the same seed.

    A row: ``name``, ``final_model``, ``runs`` (seed -> {global_test_acc, params, search_steps, train_steps,
    search_seconds, train_seconds}), and ``compare`` (whether to score it against the random cells)."""
    header = ["method", "final model", "params", "global test acc (%)", "client steps (search + train)",
              "loop seconds (search + train)", "beats random cells at the same seed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        runs = row["runs"]
        if not runs:
            lines.append(f"| {row['name']} | {row['final_model']} | (not run yet) |" + " |" * (len(header) - 3))
            continue
        values = list(runs.values())
        steps = f"{_mean(values, 'search_steps')} + {_mean(values, 'train_steps')}"
        seconds = f"{_mean(values, 'search_seconds')} + {_mean(values, 'train_seconds')}"
        fraction = beaten_fraction({seed: run["global_test_acc"] for seed, run in runs.items()}, random_cells)
        lines.append("| " + " | ".join([
            row["name"], row["final_model"], _mean(values, "params"),
            mean_std([run["global_test_acc"] for run in values], 100) + f" (n={len(values)})",
            steps, seconds, verdict(fraction) if row.get("compare", True) else "-",
        ]) + " |")
    return "\n".join(lines)


def _mean(values: list[dict[str, Any]], key: str) -> str:
    present = [value[key] for value in values if value.get(key) is not None]
    return f"{statistics.mean(present):,.0f}" if present else "0"


def op_counts(genotype: dict[str, Any]) -> tuple[int, int, int]:
    """(skip connections, parameter-free ops, edges) over both cells of a genotype.json."""
    ops = [op for op, _ in [*genotype["normal"], *genotype["reduce"]]]
    return ops.count("skip_connect"), sum(op in PARAMETER_FREE for op in ops), len(ops)


def format_diagnostics(searches: dict[str, dict[Any, dict[str, Any]]], random_genotypes: list[dict[str, Any]]) -> str:
    """Why a search may not beat random: alpha that barely moved (final entropy near ln of the op count,
    the uniform distribution's), or a collapse onto parameter-free ops (skips and pools), per method over its
    seeds, beside the random cells' share of parameter-free ops."""
    header = ["cells of", "final alpha entropy (uniform: ln 8 = 2.08)", "skip connections per cell pair",
              "parameter-free ops (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def share(genotypes: list[dict[str, Any]]) -> tuple[str, str]:
        counts = [op_counts(genotype) for genotype in genotypes]
        skips = mean_std([float(skip) for skip, _, _ in counts])
        free = mean_std([free / edges for _, free, edges in counts], 100)
        return skips, free

    for method in SEARCHED_METHODS:
        records = list(searches.get(method, {}).values())
        genotypes = [record["genotype"] for record in records if "genotype" in record]
        if not genotypes:
            continue
        entropy = [record["alpha_entropy"] for record in records if "alpha_entropy" in record]
        lines.append("| " + " | ".join([method, mean_std(entropy, digits=2) if entropy else "-", *share(genotypes)])
                     + " |")
    if random_genotypes:
        lines.append("| " + " | ".join([f"random ({len(random_genotypes)})", "- (no alpha)",
                                        *share(random_genotypes)]) + " |")
    return "\n".join(lines)
