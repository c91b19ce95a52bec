"""Building the table: the task list, resumable results, worker processes, the pilot and finalize.

Results are JSON lines, appended and flushed one line per (key, split, seed) as each training
ends, so a build killed at any point loses at most the trainings in flight; a resumed build
reads every results file in its folder and skips what is there (a torn last line is ignored).
A SLURM array's task writes a file of its own (``results-<i>of<n>.jsonl``), so shards never
share a file. ``spec.json`` pins what the results were trained under: resuming with another
budget is refused, so a table never mixes two budgets.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import itertools
import io
import json
import math
import multiprocessing
import os
import random
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from federated_nas.bench.space import BENCH_PRIMITIVES, CellSpace
from federated_nas.bench.train import Budget, NetworkShape, SplitSpec, build_split, train_fedavg
from federated_nas.errors import ConfigError, DataError

FORMAT = "fednas-bench/1"
COLUMNS = ("global_acc", "client_acc_mean", "train_seconds")  # per (split, seed) in the table


@dataclass(frozen=True)
class BuildSpec:
    """Everything a table's numbers depend on (besides the code)."""

    dataset: str = "fashion_mnist"  # or "synthetic" (tests)
    splits: tuple[str, ...] = ("dir0.1", "iid")
    seeds: tuple[int, ...] = (0, 1, 2)  # a third: under Dirichlet 0.1 two seeds agree at Spearman ~0.4 only
    num_clients: int = 10
    partition_seed: int = 0
    primitives: tuple[str, ...] = BENCH_PRIMITIVES
    steps: int = 2
    budget: Budget = field(default_factory=Budget)
    network: NetworkShape = field(default_factory=NetworkShape)

    @property
    def space(self) -> CellSpace:
        return CellSpace(tuple(self.primitives), self.steps)

    def split(self, name: str) -> SplitSpec:
        return SplitSpec(name, self.num_clients, self.partition_seed)

    def to_dict(self) -> dict:
        data = asdict(self)
        return json.loads(json.dumps(data))  # tuples as lists, as read back from JSON

    @classmethod
    def from_dict(cls, data: dict) -> "BuildSpec":
        try:
            return cls(**{**data, "splits": tuple(data["splits"]), "seeds": tuple(data["seeds"]),
                          "primitives": tuple(data["primitives"]), "budget": Budget(**data["budget"]),
                          "network": NetworkShape(**data["network"])})
        except (KeyError, TypeError) as err:
            raise DataError(f"not a bench build spec: {err}") from err

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def load_dataset(name: str, data_dir: str | Path = "data"):
    """The images a build trains on; ``synthetic`` is the tests' tiny set (8x8, 4 classes)."""
    from federated_nas.data.datasets import load_image_dataset, make_synthetic_dataset

    if name == "synthetic":
        return make_synthetic_dataset(num_classes=4, in_channels=1, image_size=8, train_per_class=40,
                                      test_per_class=10, seed=0)
    return load_image_dataset(name, str(data_dir), download=False)


# --- tasks and results ---------------------------------------------------------------------------
Task = tuple[str, str, int]  # (key, split, seed)


def task_list(spec: BuildSpec, keys: list[str] | None = None) -> list[Task]:
    """Every (key, split, seed), architectures in a fixed shuffled order: a partial build is a random sample
    of the space with every split and seed of each architecture, not the alphabetically first cells."""
    keys = sorted(keys if keys is not None else spec.space.enumerate())
    random.Random(0).shuffle(keys)
    return [(key, split, seed) for key in keys for split in spec.splits for seed in spec.seeds]


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (0 <= I < N): this process trains every N-th task from the I-th."""
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text!r}: use I/N with 0 <= I < N, e.g. --shard $SLURM_ARRAY_TASK_ID/10")
    return index, count


def read_results(folder: Path) -> dict[Task, dict]:
    """Every result recorded in a build folder's ``results*.jsonl`` (a torn line, from a kill, is skipped)."""
    records: dict[Task, dict] = {}
    for path in sorted(Path(folder).glob("results*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                records[(record["key"], record["split"], int(record["seed"]))] = record
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return records


def append_result(path: Path, record: dict) -> None:
    """Append one line; after a kill mid-line, start a new line first, so the torn one alone is lost."""
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
    with open(path, "a") as handle:
        handle.write(("\n" if torn else "") + json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def prepare_folder(folder: Path, spec: BuildSpec) -> None:
    """Create the build folder with its spec.json, or check that an existing one was built to the same spec."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.json"
    if path.exists():
        recorded = BuildSpec.from_dict(json.loads(path.read_text()))
        if recorded.fingerprint() != spec.fingerprint():
            raise ConfigError(f"{folder} holds results of another spec ({path}); use a new --out or the same "
                              "budget, splits, seeds and network")
    else:
        path.write_text(json.dumps(spec.to_dict(), indent=2) + "\n")


# --- workers ----------------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(spec: BuildSpec, data_dir: str, threads: int = 1) -> None:
    """Load the dataset and cut every split once per process (not once per task)."""
    import torch

    torch.set_num_threads(threads)
    dataset = load_dataset(spec.dataset, data_dir)
    _WORKER.update(spec=spec, space=spec.space,
                   data={name: build_split(dataset, spec.split(name)) for name in spec.splits})


def _run_task(task: Task) -> dict:
    key, split, seed = task
    spec: BuildSpec = _WORKER["spec"]
    result = train_fedavg(_WORKER["space"].genotype_of(key), _WORKER["data"][split], spec.budget, spec.network, seed)
    return {"key": key, "split": split, "seed": seed, "spec": spec.fingerprint(), **result.as_dict()}


@contextlib.contextmanager
def writing(path: Path):
    """Hold ``<path>.lock`` while appending to ``path``: a second build of the same file would train the same
    tasks in the same order (each reads what is done only at its start), so it is refused, not run twice."""
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "?"
            raise ConfigError(f"{path} is being written by another build (pid {owner}); wait for it, or split a "
                              "build over processes with --workers N or --shard I/N") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def run_tasks(spec: BuildSpec, folder: Path, tasks: list[Task], results_name: str = "results.jsonl",
              workers: int = 1, data_dir: str | Path = "data", progress: bool = True) -> int:
    """Train the tasks not yet in ``folder``, appending each result as it ends; returns how many were trained."""
    folder = Path(folder)
    prepare_folder(folder, spec)
    path = folder / results_name
    with writing(path):
        done = read_results(folder)
        todo = [task for task in tasks if task not in done]
        if todo:
            _train(spec, path, todo, len(tasks), workers, data_dir, progress)
    return len(todo)


def _train(spec: BuildSpec, path: Path, todo: list[Task], total: int, workers: int, data_dir: str | Path,
           progress: bool) -> None:
    bar = _progress(total, total - len(todo), progress)
    try:
        if workers <= 1:
            _init_worker(spec, str(data_dir))
            for task in todo:
                append_result(path, _run_task(task))
                bar.update(1)
        else:
            # spawn: a fresh interpreter per worker, so no torch thread pool is inherited half-initialised
            with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (spec, str(data_dir))) as pool:
                for record in pool.imap_unordered(_run_task, todo):
                    append_result(path, record)
                    bar.update(1)
    finally:
        bar.close()


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="training", disable=not enabled, dynamic_ncols=True,
                smoothing=0.05, file=sys.stderr)


# --- statistics ----------------------------------------------------------------------------------------
def spearman(a, b) -> float:
    """Spearman's rho; nan where it is undefined (under 3 values, or a constant column: tiny builds)."""
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def kendall(a, b) -> float:
    from scipy.stats import kendalltau

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(kendalltau(a, b).statistic)


def per_key(records: dict[Task, dict], split: str, seeds: tuple[int, ...], column: str = "global_acc"
            ) -> dict[str, list[float]]:
    """key -> the column's value per seed, for the architectures that have every seed of the split."""
    table: dict[str, dict[int, float]] = {}
    for (key, s, seed), record in records.items():
        if s == split and seed in seeds:
            table.setdefault(key, {})[seed] = float(record[column])
    return {key: [values[seed] for seed in seeds] for key, values in sorted(table.items()) if len(values) == len(seeds)}


def top_count(architectures: int) -> int:
    """How many architectures make the top 5% of ``architectures`` (at least one)."""
    return max(1, math.ceil(0.05 * architectures))


def ranking_stats(accs: dict[str, list[float]]) -> dict[str, float]:
    """Whether a table ranks: seed-vs-seed Spearman, the top 5% against the median, and the seed noise."""
    if not accs:
        return {"architectures": 0}
    values = np.array(list(accs.values()))  # [architectures, seeds]
    means = values.mean(1)
    top = np.sort(means)[::-1][:top_count(len(means))]
    stats = {"architectures": len(accs), "mean": float(means.mean()), "median": float(np.median(means)),
             "best": float(means.max()), "worst": float(means.min()), "top5pct_mean": float(top.mean()),
             "top5pct_minus_median": float(top.mean() - np.median(means)),
             "seed_std_mean": float(values.std(1, ddof=1).mean()) if values.shape[1] > 1 else float("nan")}
    if values.shape[1] >= 2:
        stats["spearman_seeds"] = spearman(values[:, 0], values[:, 1])
        stats["abs_seed_diff_mean"] = float(np.abs(values[:, 0] - values[:, 1]).mean())
        # every pair of seeds, and what it implies for the table's value, the mean over all k seeds
        # (Spearman-Brown: k r / (1 + (k - 1) r)): how far a ranking by the table's means can be trusted
        pairs = [spearman(values[:, i], values[:, j]) for i, j in itertools.combinations(range(values.shape[1]), 2)]
        r, k = float(np.mean(pairs)), values.shape[1]
        stats["spearman_seed_pairs_mean"] = r
        stats["mean_reliability"] = k * r / (1 + (k - 1) * r) if r > -1 / (k - 1) else float("nan")
    return stats


def pilot_keys(spec: BuildSpec, count: int, seed: int = 1234) -> list[str]:
    keys = sorted(spec.space.enumerate())
    if not 1 <= count <= len(keys):
        raise ConfigError(f"--pilot {count}: choose 1..{len(keys)} architectures")
    return random.Random(seed).sample(keys, count)


def run_pilot(spec: BuildSpec, folder: Path, count: int, workers: int = 1, data_dir: str | Path = "data",
              progress: bool = True) -> dict[str, dict[str, float]]:
    """Train ``count`` random architectures on every split and seed of ``spec``; the ranking stats per split."""
    folder = Path(folder) / f"pilot-{spec.fingerprint()}"
    run_tasks(spec, folder, task_list(spec, pilot_keys(spec, count)), workers=workers, data_dir=data_dir,
              progress=progress)
    records = read_results(folder)
    stats = {split: ranking_stats(per_key(records, split, spec.seeds)) for split in spec.splits}
    seconds = [r["train_seconds"] + r["eval_seconds"] for r in records.values()]
    for split_stats in stats.values():
        split_stats["seconds_per_training"] = float(np.mean(seconds))
    return stats


# --- finalize ---------------------------------------------------------------------------------------------
def table_from_results(spec: BuildSpec, records: dict[Task, dict], name: str) -> dict:
    """The committed table: every architecture with all its (split, seed) results."""
    space = spec.space
    architectures = {}
    by_key: dict[str, dict] = {}
    for (key, split, seed), record in records.items():
        by_key.setdefault(key, {})[(split, seed)] = record
    for key in sorted(by_key):
        results = by_key[key]
        if any((split, seed) not in results for split in spec.splits for seed in spec.seeds):
            continue
        first = results[(spec.splits[0], spec.seeds[0])]
        entry = {"params": int(first["params"]), "flops": int(first["flops"])}
        for split in spec.splits:
            entry[split] = {column: [round(float(results[(split, seed)][column]), 5) for seed in spec.seeds]
                            for column in COLUMNS}
        architectures[key] = entry
    counts = space.counts()
    return {"format": FORMAT, "name": name, "space": {"primitives": list(space.primitives), "steps": space.steps,
                                                      **counts},
            "spec": spec.to_dict(), "splits": list(spec.splits), "seeds": list(spec.seeds),
            "columns": list(COLUMNS), "architectures": architectures}


def write_table(table: dict, path: Path) -> Path:
    """The table as gzip'd JSON, byte-for-byte reproducible (no timestamp), and its ``.sha256`` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(table, sort_keys=True, separators=(",", ":")).encode()
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as handle:
        handle.write(raw)
    path.write_bytes(buffer.getvalue())
    checksum_path(path).write_text(f"{hashlib.sha256(buffer.getvalue()).hexdigest()}  {path.name}\n")
    return path


def checksum_path(path: Path) -> Path:
    return Path(str(path) + ".sha256")


def read_build(folder: Path) -> tuple[BuildSpec, dict[Task, dict]]:
    """A build or pilot folder's spec and the results trained so far."""
    spec_file = Path(folder) / "spec.json"
    if not spec_file.is_file():
        raise DataError(f"{folder} is not a bench build folder (no spec.json); run the build first")
    return BuildSpec.from_dict(json.loads(spec_file.read_text())), read_results(Path(folder))


def report(folder: Path, columns: tuple[str, ...] = ("global_acc", "client_acc_mean")) -> dict[str, dict]:
    """Per split and column, the ranking stats of what a folder holds so far (a pilot's, a build's):
    how a budget ranks, read from its results rather than retrained."""
    spec, records = read_build(folder)
    seconds = [r["train_seconds"] + r["eval_seconds"] for r in records.values()]
    result = {}
    for split in spec.splits:
        for column in columns:
            stats = ranking_stats(per_key(records, split, spec.seeds, column))
            stats["seconds_per_training"] = float(np.mean(seconds)) if seconds else float("nan")
            result[f"{split} {column}"] = stats
    return result


def finalize(folder: Path, table_path: Path) -> tuple[Path, Path]:
    """Write the table, its checksum and its datasheet from a build folder's results."""
    from federated_nas.bench.datasheet import datasheet

    spec, records = read_build(folder)
    name = Path(table_path).name.split(".")[0]
    table = table_from_results(spec, records, name)
    if not table["architectures"]:
        raise DataError(f"{folder}: no architecture has all its {len(spec.splits)} splits x {len(spec.seeds)} seeds yet")
    path = write_table(table, table_path)
    sheet = path.with_name(name + ".md")
    sheet.write_text(datasheet(table, records))
    return path, sheet


def spec_with(spec: BuildSpec, **changes) -> BuildSpec:
    """``spec`` with budget or network fields changed by name (the CLI's flags)."""
    budget = {k: v for k, v in changes.items() if k in Budget.__dataclass_fields__ and v is not None}
    network = {k: v for k, v in changes.items() if k in NetworkShape.__dataclass_fields__ and v is not None}
    rest = {k: v for k, v in changes.items() if k in BuildSpec.__dataclass_fields__ and v is not None}
    return replace(spec, budget=replace(spec.budget, **budget), network=replace(spec.network, **network), **rest)
