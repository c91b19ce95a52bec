"""Scoring a search run against the tabular benchmark (docs/bench.md): where its architecture stands.

A search of ``search_space=bench`` derives one cell; the table holds the FedAvg accuracy of every cell
of that space, so a search is judged by a look-up instead of a retraining: the ground-truth accuracy of
its genotype, its percentile among all architectures, its regret to the best, and how well the method's
own belief ranks the whole space (Kendall's tau between the ground truth and the log-probability alpha
gives each architecture). The cost is what the search spent: client steps (batches) and bytes.

The method's belief: alpha's distribution with removed ops at 0 (``op_distribution``: a softmax at
temperature 1, whatever the relaxation's temperature, so Gumbel and softmax methods are read alike;
FedRLNAS' policy is the same distribution), plus FedMetaNAS' input-combination weights beta where
present. An architecture's score is the log-probability of its cell, the sum over its edges; a key
written by several genotypes (isomorphic cells) takes its most likely one, the one a derivation
would pick.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from federated_nas.bench.space import INPUTS, CellSpace
from federated_nas.bench.table import Bench
from federated_nas.errors import DataError
from federated_nas.search_space.supernet import node_input_combinations
from federated_nas.tracking.cell_evaluation import client_steps

LOG_ZERO = -1e9  # log-probability of a removed op: below every live one, and finite for the rank statistics


@dataclass(frozen=True)
class SearchScore:
    """One search run scored on one split of the table."""

    run_dir: str
    method: str
    split: str
    key: str  # the canonical key of the run's derived architecture
    accuracy: float  # ground truth: the table's mean global test accuracy over its seeds
    accuracy_std: float
    percentile: float  # % of the space's architectures at most as good (the best: 100)
    regret: float  # the split's best mean accuracy minus this one
    best_key: str
    best_accuracy: float
    kendall_tau: float | None  # the method's ranking of the space against the ground truth (None: no alpha)
    client_steps: int | None  # batches the clients processed over the search (None: local_batches unset)
    bytes_communicated: int  # server to clients plus back, summed over rounds
    search_seconds: float
    notes: list[str] = field(default_factory=list)  # where the run's data differ from the table's

    def metrics(self) -> dict[str, float]:
        """What MLflow records, under ``bench/``."""
        metrics = {"accuracy": self.accuracy, "percentile": self.percentile, "regret": self.regret,
                   "kendall_tau": self.kendall_tau, "client_steps": self.client_steps,
                   "bytes_communicated": self.bytes_communicated}
        return {f"bench/{name}": float(value) for name, value in metrics.items() if value is not None}

    def tags(self, table: str | Path) -> dict[str, str]:
        """The run's tags naming what was looked up where (the table with its checksum)."""
        return {"bench.key": self.key, "bench.split": self.split,
                "bench.table": f"{Path(table).name} ({_checksum(Path(table))[:12]})"}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        tau = "n/a" if self.kendall_tau is None else f"{self.kendall_tau:+.3f}"
        steps = "?" if self.client_steps is None else f"{self.client_steps:,}"
        lines = [f"{self.run_dir} ({self.method}, split {self.split})",
                 f"  architecture {self.key}: {100 * self.accuracy:.2f} ± {100 * self.accuracy_std:.2f}% "
                 f"(percentile {self.percentile:.1f}, regret {100 * self.regret:.2f} points to {self.best_key}, "
                 f"{100 * self.best_accuracy:.2f}%)",
                 f"  Kendall tau of the method's ranking of the space: {tau}",
                 f"  cost: {steps} client steps, {self.bytes_communicated / 1e6:,.1f} MB, "
                 f"{self.search_seconds:,.0f} s"]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def split_of(cfg: DictConfig) -> str | None:
    """The table's name for the run's partition (``dir0.1``, ``iid``); None where the table has no such split."""
    partition = cfg.partition
    if partition.name == "iid":
        return "iid"
    if partition.name == "dirichlet":
        return f"dir{float(partition.alpha):g}"
    return None


def data_differences(cfg: DictConfig, bench: Bench) -> list[str]:
    """How the clients a run searched on differ from the table's (the look-up then answers for other clients)."""
    spec, notes = bench.table.get("spec") or {}, []
    if not spec:
        return notes
    partition_seed = cfg.get("partition_seed")
    checks = {"dataset": (cfg.dataset.name, spec.get("dataset")),
              "clients": (int(cfg.federation.num_clients), spec.get("num_clients")),
              "partition seed": (int(cfg.seed if partition_seed is None else partition_seed), spec.get("partition_seed"))}
    for name, (run, table) in checks.items():
        if table is not None and run != table:
            notes.append(f"the run's {name} is {run}, the table's {table}")
    return notes


def architecture_log_probabilities(state: dict[str, torch.Tensor], primitives: list[str], space: CellSpace
                                   ) -> dict[str, float]:
    """key -> log-probability of the architecture under the run's alpha (and beta), the module's belief."""
    unknown = [op for op in space.primitives if op not in primitives]
    if unknown:
        raise DataError(f"the run's search space has no {', '.join(unknown)}: it is not the benchmark's space")
    alpha, mask = state["alpha_normal"].double(), state.get("op_mask_normal")
    if mask is not None:
        alpha = alpha.masked_fill(~mask.bool(), -math.inf)
    log_ops = torch.log_softmax(alpha, dim=-1).clamp(min=LOG_ZERO)
    column = {op: primitives.index(op) for op in space.primitives}
    offsets = [sum(INPUTS + j for j in range(node)) for node in range(space.steps)]
    if alpha.shape[0] != offsets[-1] + INPUTS + space.steps - 1:
        raise DataError(f"the run's alpha has {alpha.shape[0]} edges; the bench space of {space.steps} nodes has "
                        f"{offsets[-1] + INPUTS + space.steps - 1}")
    log_combo = _combination_log_probabilities(state, space.steps)
    scores: dict[str, float] = {}
    for cell, key in space.raw_keys():
        score = 0.0
        for node, edges in enumerate(cell):
            score += sum(float(log_ops[offsets[node] + source, column[op]]) for source, op in edges)
            if log_combo is not None:
                score += log_combo[(node, tuple(source for source, _ in edges))]
        scores[key] = max(score, scores.get(key, -math.inf))
    return scores


def _combination_log_probabilities(state: dict[str, torch.Tensor], steps: int) -> dict | None:
    """(node, sources) -> log weight of that input pair (FedMetaNAS' beta), or None without input pruning."""
    beta = state.get("beta_normal")
    if beta is None:
        return None
    combinations = node_input_combinations(steps, INPUTS)
    if len(combinations) != beta.numel():
        raise DataError(f"the run's beta has {beta.numel()} input combinations; pairs of inputs give {len(combinations)}")
    beta, mask = beta.double(), state.get("combo_mask_normal")
    if mask is not None:
        beta = beta.masked_fill(~mask.bool(), -math.inf)
    result = {}
    for node in range(steps):
        index = [c for c, (n, _) in enumerate(combinations) if n == node]
        log_weights = torch.log_softmax(beta[index], dim=0).clamp(min=LOG_ZERO)
        result.update({combinations[c]: float(w) for c, w in zip(index, log_weights)})
    return result


def kendall_tau(scores: dict[str, float], bench: Bench, split: str) -> float | None:
    """Kendall's tau-b between a ranking of the table's architectures and their ground truth (None: constant)."""
    from scipy.stats import kendalltau

    keys = bench.keys()
    belief = np.array([scores[key] for key in keys])
    truth = np.array([bench.query(key, split).mean for key in keys])
    if np.ptp(belief) == 0 or np.ptp(truth) == 0:
        return None
    return float(kendalltau(belief, truth).statistic)


def score_search(run_dir: str | Path, checkpoint: dict[str, Any], bench: Bench, split: str | None = None
                 ) -> SearchScore:
    """Score a search run (its config.yaml, genotype.json and ``checkpoint``, its last) on ``split`` (default:
    the split of the run's own partition)."""
    run_dir = Path(run_dir)
    for required in ("config.yaml", "genotype.json"):
        if not (run_dir / required).is_file():
            raise DataError(f"{run_dir} has no {required}: not a search run dir, or one that has not finished a round")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    split = split or split_of(cfg)
    if split is None or split not in bench.splits:
        raise DataError(f"{run_dir}: its partition ({cfg.partition.name}) is none of the table's splits "
                        f"({', '.join(bench.splits)}); name one with --split")
    entry = bench.query(run_dir / "genotype.json", split)
    best = bench.best(split)
    state, history = checkpoint["model"], checkpoint.get("history", [])
    scores = None
    if "alpha_normal" in state:
        scores = architecture_log_probabilities(state, list(cfg.search_space.primitives), bench.space)
    notes = data_differences(cfg, bench)
    if int(checkpoint.get("round", 0)) < int(checkpoint.get("rounds", 0)):
        notes.append(f"the search stopped at round {checkpoint['round']} of {checkpoint['rounds']}")
    traffic = sum(int(r.get("bytes_sent", 0)) + int(r.get("bytes_received", 0)) for r in history)
    done = dict(cfg.federation, rounds=int(checkpoint.get("round", 0)))
    return SearchScore(
        run_dir=str(run_dir), method=str(cfg.algorithm.name), split=split, key=entry.key, accuracy=entry.mean,
        accuracy_std=entry.std, percentile=entry.percentile, regret=entry.regret, best_key=best.key,
        best_accuracy=best.mean, kendall_tau=kendall_tau(scores, bench, split) if scores else None,
        client_steps=client_steps({"federation": done}) if done.get("local_batches") is not None else None,
        bytes_communicated=traffic, search_seconds=float(checkpoint.get("elapsed_seconds", 0.0)), notes=notes)


def log_score(score: SearchScore, cfg: DictConfig, run_id: str | None, table: Path) -> bool:
    """Add the scores to the run's MLflow record (metrics ``bench/*``, tags naming the table); False where the
    run has no MLflow record."""
    if not run_id or not cfg.get("logger") or not cfg.logger.get("tracking_uri"):
        return False
    from federated_nas.tracking.run_store import open_store

    client = open_store(str(cfg.logger.tracking_uri))
    for name, value in score.metrics().items():
        client.log_metric(run_id, name, value)
    for name, value in score.tags(table).items():
        client.set_tag(run_id, name, value)
    return True


def _checksum(table: Path) -> str:
    path = Path(str(table) + ".sha256")
    return path.read_text().split()[0] if path.is_file() else "no checksum"
