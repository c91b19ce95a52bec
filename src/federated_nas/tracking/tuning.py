"""The tuning protocol's bookkeeping: the plan an experiment's ``tuning`` node gives, the pick, the table.

Comparisons are fair only if every method is tuned the same way: the same number of grid points,
chosen on validation data, and reported over seeds. This module holds the parts of that protocol
that need no run (``scripts/tune.py`` runs them), so they can be tested on hand-made numbers.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from federated_nas.errors import ConfigError

PERSONAL_ACC = "personalized_acc_after_mean"  # a seed run's local test accuracy after personalization
# what a grid point can be picked by (validation.validation_score): the final global model's, or the mean
# over clients of their personalized models' (runs with personalize=true); True: lower is better
SELECTION_METRICS = {"val_acc": False, "val_loss": True, "personal_val_acc": False, "personal_val_loss": True}
# the budget a table holds equal unless a grid sets it; printed under the table
BUDGET_KEYS = ("federation.rounds", "federation.num_clients", "federation.client_fraction",
               "federation.local_epochs", "federation.local_batches", "federation.batch_size", "partition.alpha")


@dataclass(frozen=True)
class MethodPlan:
    """A method: the overrides that define it and its grid (each point a list of overrides).

    ``retrain``: for a search + retrain method (FedNAS), the train stage's own overrides: each run is then a
    search (``src/search.py``, with the grid point) and the training of its genotype (``src/train.py``),
    and the trained network is what is scored. None: the search run is the method's final model.
    """

    name: str
    overrides: list[str]
    grid: list[list[str]]
    retrain: list[str] | None = None


def tuning_plan(tuning: DictConfig | dict) -> list[MethodPlan]:
    """The methods of a ``tuning`` node; every grid must have the same number of points (no method tuned more)."""
    node = OmegaConf.to_container(tuning, resolve=True) if isinstance(tuning, DictConfig) else tuning
    methods = node.get("methods") or {}
    if not methods:
        raise ConfigError("tuning.methods is empty: name at least one method with its overrides and grid")
    plans = [MethodPlan(name, list(spec.get("overrides") or []), [list(point) for point in spec.get("grid") or []],
                        None if spec.get("retrain") is None else list(spec["retrain"]))
             for name, spec in methods.items()]
    sizes = {plan.name: len(plan.grid) for plan in plans}
    if min(sizes.values()) < 1 or len(set(sizes.values())) > 1:
        raise ConfigError(f"tuning.methods: every method needs the same number (>= 1) of grid points, got {sizes}")
    if not node.get("seeds"):
        raise ConfigError("tuning.seeds is empty: the picks must run at one seed at least")
    return plans


def setting_keys(point: list[str]) -> list[str]:
    """The dotted keys a grid point sets (``algorithm.lr=0.2`` -> ``algorithm.lr``)."""
    return [override.split("=", 1)[0].lstrip("+~") for override in point]


def pick(scores: list[dict[str, float]], metric: str) -> int:
    """Index of the best grid point by its validation ``metric`` (first of equals); reads nothing else."""
    if metric not in SELECTION_METRICS:
        raise ConfigError(f"tuning.selection_metric must be one of {', '.join(SELECTION_METRICS)}, got {metric!r}")
    missing = [index for index, score in enumerate(scores) if metric not in score]
    if missing:
        raise ConfigError(f"tuning.selection_metric={metric}: grid points {missing} have no such score "
                          f"(personal_* needs runs with personalize=true)")
    values = [score[metric] for score in scores]
    best = min(values) if SELECTION_METRICS[metric] else max(values)
    return values.index(best)


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± sample std`` (just the value for one), e.g. ``92.9 ± 0.4``."""
    values = [v * scale for v in values]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of a ``tuning.json``: per method the pick, its val score and its test accuracy over seeds."""
    metric = result["selection_metric"]
    seeds = result["seeds"]
    personal = any(PERSONAL_ACC in record for method in result["methods"].values()
                   for record in method.get("seeds", {}).values())
    header = ["method", "picked setting", f"{metric} of the pick (seed {seeds[0]})", "global test acc (%)",
              "after discretization (%)", "client test acc (%)",
              *(["local test acc after personalization (%)"] if personal else []), "loop / wall time per run (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, method in result["methods"].items():
        runs = [method["seeds"][str(seed)] for seed in seeds if str(seed) in method.get("seeds", {})]
        if method.get("pick") is None or not runs:
            lines.append(f"| {name} | (not run yet) |" + " |" * (len(header) - 2))
            continue
        point = method["grid"][method["pick"]]
        val = point["val"][metric]
        discrete = [r["global_test_acc_discrete"] for r in runs if "global_test_acc_discrete" in r]
        local = [r[PERSONAL_ACC] for r in runs if PERSONAL_ACC in r]
        lines.append("| " + " | ".join([
            name, ", ".join(point["overrides"]) or "(defaults)",
            f"{val * 100:.1f}%" if metric.endswith("_acc") else f"{val:.3f}",
            mean_std([r["global_test_acc"] for r in runs], 100),
            mean_std(discrete, 100) if len(discrete) == len(runs) else "",
            mean_std([r["client_test_acc_mean"] for r in runs], 100),
            *([mean_std(local, 100) if len(local) == len(runs) else ""] if personal else []),
            (f"{statistics.mean(r['elapsed_seconds'] for r in runs):.0f} / "
             f"{statistics.mean(r['wall_seconds'] for r in runs):.0f}"),
        ]) + " |")
    lines.append("")
    scored_on = ("holdout splits (a part of every client's share no run trained on: grid runs with "
                 f"{result['grid_split'][0]}; the picks then ran with the experiment's split)"
                 if result.get("grid_split") else "val splits")
    scored_by = ("the mean over clients of each personalized model on that client's own part of the "
                 if metric.startswith("personal_") else "the final global model on the union of the clients' ")
    lines.append(f"Mean ± sample std over seeds {', '.join(map(str, seeds))}; each method's grid "
                 f"({result['grid_points']} points) ran at seed {seeds[0]} and was scored by {scored_by}"
                 f"{scored_on} (never the test set).")
    lines.append(held_equal(result))
    return "\n".join(lines)


def held_equal(result: dict[str, Any]) -> str:
    """The budget line: what every run shared, which methods' own overrides set a budget setting (e.g. the
    single-path methods' rounds, for equal wall time), and which methods' grids changed one."""
    methods = result["methods"]
    own = {key: {name: override.split("=", 1)[1] for name, method in methods.items()
                 for override in method.get("overrides", []) if setting_keys([override]) == [key]}
           for key in result["budget"]}
    tuned = {key: sorted(name for name, method in methods.items()
                         if any(key in setting_keys(p["overrides"]) for p in method["grid"]))
             for key in result["budget"]}
    equal = [f"{key}={'null' if value is None else value}" for key, value in result["budget"].items()
             if not tuned[key] and not own[key]]
    line = "Held equal: " + (", ".join(equal) if equal else "none of the budget settings") + "."
    by_method = [f"{key} ({', '.join(f'{name} {value}' for name, value in values.items())}; the others "
                 f"{result['budget'][key]})" for key, values in own.items() if values]
    if by_method:
        line += " Set per method: " + "; ".join(by_method) + "."
    retrained = [f"{name} ({', '.join(method['retrain']) or 'the experiment settings'})"
                 for name, method in methods.items() if method.get("retrain") is not None]
    if retrained:
        line += (" Searched, then its genotype trained by src/train.py, and scored and timed over both stages: "
                 + "; ".join(retrained) + ".")
    changed = [f"{key} ({', '.join(names)}: by its grid; the others {result['budget'][key]})"
               for key, names in tuned.items() if names]
    if changed:
        line += " Tuned, so client compute per round differs: " + "; ".join(changed) + "."
    return line
