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

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from federated_nas.bench.build import kendall
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


@dataclass(frozen=True)
class SearchRecord:
    """What a search run found and what it spent, with no table: a run dir reduced to what its score needs.

    Why: run dirs live under logs/ and are not committed; the records of the searches behind a results table
    are (``scripts/bench.py export``), so a fresh clone scores them again against the table.
    """

    run_dir: str
    method: str
    seed: int
    partition: str  # the run's partition config (dirichlet, iid, ...)
    split: str | None  # the table's name for it (None: no table has such a split)
    space: str  # ``CellSpace.name`` of the run's search space: a table scores records of its own space only
    key: str  # the canonical key of the run's derived architecture
    log_probabilities: dict[str, float] | None  # key -> the method's belief (None: the method has no alpha)
    client_steps: int | None  # batches the clients processed over the search (None: local_batches unset)
    bytes_communicated: int  # server to clients plus back, summed over rounds
    search_seconds: float
    data: dict[str, Any]  # dataset, clients, partition seed: compared with the table's (``data_differences``)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchRecord":
        try:
            return cls(**data)
        except TypeError as err:
            raise DataError(f"not a search record ({err}): {json.dumps(data)[:80]}") from err


def split_of(cfg: DictConfig) -> str | None:
    """The table's name for the run's partition (``dir0.1``, ``iid``); None where the table has no such split."""
    partition = cfg.partition
    if partition.name == "iid":
        return "iid"
    if partition.name == "dirichlet":
        return f"dir{float(partition.alpha):g}"
    return None


def space_of(cfg: DictConfig) -> CellSpace:
    """The benchmark space a run searched (its ops but ``none``, its node count)."""
    ops = tuple(op for op in cfg.search_space.primitives if op != "none")
    return CellSpace(ops, int(cfg.search_space.steps))


def data_differences(data: dict[str, Any], bench: Bench) -> list[str]:
    """How the clients a run searched on differ from the table's (the look-up then answers for other clients)."""
    spec, notes = bench.table.get("spec") or {}, []
    table = {"dataset": spec.get("dataset"), "clients": spec.get("num_clients"),
             "partition seed": spec.get("partition_seed")}
    for name, run in data.items():
        if table.get(name) is not None and run != table[name]:
            notes.append(f"the run's {name} is {run}, the table's {table[name]}")
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
    """Kendall's tau-b between a ranking of the table's architectures and their ground truth (None: a constant
    ranking, such as uniform alpha, or fewer than 3 architectures)."""
    keys = bench.keys()
    tau = kendall([scores[key] for key in keys], [bench.query(key, split).mean for key in keys])
    return None if math.isnan(tau) else tau


def search_record(run_dir: str | Path, checkpoint: dict[str, Any], space: CellSpace | None = None
                  ) -> SearchRecord:
    """A search run (its config.yaml, genotype.json and ``checkpoint``, its last) as a record; ``space``: the
    table's (default: the run's own)."""
    run_dir = Path(run_dir)
    for required in ("config.yaml", "genotype.json"):
        if not (run_dir / required).is_file():
            raise DataError(f"{run_dir} has no {required}: not a search run dir, or one that has not finished a round")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if not OmegaConf.select(cfg, "search_space.tie_cells"):  # the DARTS space's cells could not be enumerated
        raise DataError(f"{run_dir} did not search the benchmark's space (search_space=bench): nothing to score")
    space = space or space_of(cfg)
    state, history = checkpoint["model"], checkpoint.get("history", [])
    scores = None
    if "alpha_normal" in state:
        scores = architecture_log_probabilities(state, list(cfg.search_space.primitives), space)
    notes = []
    if int(checkpoint.get("round", 0)) < int(checkpoint.get("rounds", 0)):
        notes.append(f"the search stopped at round {checkpoint['round']} of {checkpoint['rounds']}")
    traffic = sum(int(r.get("bytes_sent", 0)) + int(r.get("bytes_received", 0)) for r in history)
    done = dict(cfg.federation, rounds=int(checkpoint.get("round", 0)))
    partition_seed = cfg.get("partition_seed")
    return SearchRecord(
        run_dir=str(run_dir), method=str(cfg.algorithm.name), seed=int(cfg.seed), partition=str(cfg.partition.name),
        split=split_of(cfg), space=space.name, key=space.key_of(run_dir / "genotype.json"), log_probabilities=scores,
        client_steps=client_steps({"federation": done}) if done.get("local_batches") is not None else None,
        bytes_communicated=traffic, search_seconds=float(checkpoint.get("elapsed_seconds", 0.0)),
        data={"dataset": str(cfg.dataset.name), "clients": int(cfg.federation.num_clients),
              "partition seed": int(cfg.seed if partition_seed is None else partition_seed)},
        notes=notes)


def score_record(record: SearchRecord, bench: Bench, split: str | None = None) -> SearchScore:
    """Score a search's record on ``split`` of the table (default: the split of the run's own partition)."""
    split = split or record.split
    if split is None or split not in bench.splits:
        raise DataError(f"{record.run_dir}: its partition ({record.partition}) is none of the table's splits "
                        f"({', '.join(bench.splits)}); name one with --split")
    if record.space != bench.space.name:
        raise DataError(f"{record.run_dir} searched the space {record.space}, the table holds {bench.space.name}")
    entry, best = bench.query(record.key, split), bench.best(split)
    scores = record.log_probabilities
    return SearchScore(
        run_dir=record.run_dir, method=record.method, split=split, key=entry.key, accuracy=entry.mean,
        accuracy_std=entry.std, percentile=entry.percentile, regret=entry.regret, best_key=best.key,
        best_accuracy=best.mean, kendall_tau=kendall_tau(scores, bench, split) if scores else None,
        client_steps=record.client_steps, bytes_communicated=record.bytes_communicated,
        search_seconds=record.search_seconds, notes=data_differences(record.data, bench) + record.notes)


def score_search(run_dir: str | Path, checkpoint: dict[str, Any], bench: Bench, split: str | None = None
                 ) -> SearchScore:
    """Score a search run (its config.yaml, genotype.json and ``checkpoint``, its last) on ``split`` (default:
    the split of the run's own partition)."""
    return score_record(search_record(run_dir, checkpoint, bench.space), bench, split)


def read_records(path: str | Path) -> list[SearchRecord]:
    """The search records of a ``scripts/bench.py export`` file (JSON lines)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such search-record file (scripts/bench.py export writes one)")
    try:
        return [SearchRecord.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not JSON lines of search records ({err})") from err


def write_records(records: list[SearchRecord], path: str | Path) -> Path:
    """Write ``records`` as JSON lines, whole or not at all (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(r.as_dict(), sort_keys=True) + "\n" for r in records))
    partial.replace(path)
    return path


def method_table(scores: list[SearchScore], baselines: dict[str, list[tuple[str, dict[str, Any]]]] | None = None
                 ) -> str:
    """The benchmark's results table, one markdown table per split: each method's scores over its seeds
    (mean ± std), then ``baselines[split]``: (name, {"accuracy": [...], "percentile": [...], "regret": [...],
    and optionally "tau": [...], "client_steps": n, "megabytes": [...], "minutes": [...], "keys": [...]}) rows,
    e.g. random search at a search's cost, or the space ranked by parameter count."""
    header = ("| method | seeds | accuracy (%) | percentile | regret (points) | Kendall τ | client steps | MB | "
              "minutes | architectures found |\n|---|---|---|---|---|---|---|---|---|---|")
    blocks = []
    for split in sorted({s.split for s in scores} | set(baselines or {})):
        rows = [header]
        for method in sorted({s.method for s in scores if s.split == split}):
            runs = [s for s in scores if s.split == split and s.method == method]
            rows.append(_table_row(method, _method_runs(runs)))
        rows += [_table_row(name, row) for name, row in (baselines or {}).get(split, [])]
        blocks.append(f"**{split}**\n\n" + "\n".join(rows))
    return "\n\n".join(blocks)


def _method_runs(runs: list[SearchScore]) -> dict[str, Any]:
    """A method's seeds as a table row's values (the form ``method_table``'s baselines come in)."""
    return {"accuracy": [s.accuracy for s in runs], "percentile": [s.percentile for s in runs],
            "regret": [s.regret for s in runs], "tau": [s.kendall_tau for s in runs if s.kendall_tau is not None],
            "client_steps": sorted({s.client_steps for s in runs if s.client_steps is not None}),
            "megabytes": [s.bytes_communicated / 1e6 for s in runs], "minutes": [s.search_seconds / 60 for s in runs],
            "keys": [s.key for s in runs]}


def _table_row(name: str, row: dict[str, Any]) -> str:
    from federated_nas.tracking.tuning import mean_std

    steps = row.get("client_steps")  # a method's: every value its seeds had ('?': unknown); a baseline's: one
    steps_text = ("-" if steps is None else f"{steps:,}" if isinstance(steps, int)
                  else "/".join(f"{n:,}" for n in steps) or "?")
    return (f"| {name} | {row.get('seeds', len(row['accuracy']))} | {mean_std(row['accuracy'], 100, 2)} | "
            f"{mean_std(row['percentile'])} | {mean_std(row['regret'], 100, 2)} | "
            f"{mean_std(row.get('tau', []), 1, 3) or 'n/a'} | {steps_text} | "
            f"{mean_std(row.get('megabytes', [])) or '-'} | {mean_std(row.get('minutes', [])) or '-'} | "
            f"{len(set(row.get('keys', []))) or '-'} |")


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
