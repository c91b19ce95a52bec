"""The query API: the ground-truth accuracy of any architecture of the benchmark's space.

``Bench.load(path)`` reads a table written by ``scripts/build_bench.py --finalize`` and checks it
against its ``.sha256`` first, so a table edited or truncated by accident is refused (one line)
instead of answering wrong numbers.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from federated_nas.bench.space import CellSpace, canonical, format_key, parse_key, space_from_dict
from federated_nas.errors import DataError
from federated_nas.search_space.genotypes import Genotype

FORMAT = "fednas-bench/1"


@dataclass(frozen=True)
class Entry:
    """One architecture on one split: accuracies over the seeds and where they stand in the space."""

    key: str
    split: str
    mean: float  # global test accuracy, mean over seeds
    std: float  # over seeds (ddof=1; 0 for one seed)
    accs: tuple[float, ...]  # per seed, in the table's seed order
    client_acc_mean: float  # mean over seeds of the mean client accuracy
    params: int
    flops: int
    percentile: float  # % of the space's architectures with a mean at most this one's (the best: 100)
    regret: float  # the best mean of the split minus this mean


class Bench:
    """A loaded table; ``query(arch, split)`` takes a key, a Genotype, its dict or a genotype.json path."""

    def __init__(self, table: dict):
        if table.get("format") != FORMAT:
            raise DataError(f"not a {FORMAT} table (format {table.get('format')!r})")
        self.table = table
        self.space: CellSpace = space_from_dict(table["space"])
        self.splits: list[str] = list(table["splits"])
        self.seeds: list[int] = list(table["seeds"])
        self.architectures: dict[str, dict] = table["architectures"]
        self._means = {split: {key: float(np.mean(entry[split]["global_acc"])) for key, entry in self.architectures.items()}
                       for split in self.splits}
        self._sorted = {split: np.sort(np.fromiter(means.values(), float)) for split, means in self._means.items()}

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "Bench":
        """Read a table (.json or .json.gz); ``verify``: its bytes must match the ``<path>.sha256`` beside it."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise DataError(f"cannot read bench table {path}: {err.strerror or err}") from err
        if verify:
            check_checksum(path, raw)
        try:
            text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
            return cls(json.loads(text))
        except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"bench table {path} is not gzip'd or plain JSON: {err}") from err

    def __len__(self) -> int:
        return len(self.architectures)

    def keys(self) -> list[str]:
        return sorted(self.architectures)

    def key(self, arch: str | Genotype | dict | Path) -> str:
        """The canonical key of a key (in any labelling), a Genotype, its dict, or a genotype.json path."""
        if isinstance(arch, str) and not Path(arch).suffix == ".json" and "~" in arch:
            return format_key(*canonical(*parse_key(arch)))
        return self.space.key_of(arch)

    def query(self, arch: str | Genotype | dict | Path, split: str) -> Entry:
        key = self.key(arch)
        self._check_split(split)
        if key not in self.architectures:
            raise DataError(f"architecture {key} is in the space but not in this table ({len(self)} of "
                            f"{self.table['space']['unique']} architectures)")
        entry = self.architectures[key]
        accs = tuple(float(a) for a in entry[split]["global_acc"])
        mean = self._means[split][key]
        return Entry(key=key, split=split, mean=mean, std=float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                     accs=accs, client_acc_mean=float(np.mean(entry[split]["client_acc_mean"])),
                     params=int(entry["params"]), flops=int(entry["flops"]), percentile=self.percentile_of(mean, split),
                     regret=float(self._sorted[split][-1] - mean))

    def best(self, split: str) -> Entry:
        """The architecture of the highest mean accuracy (ties: the smallest key)."""
        self._check_split(split)
        means = self._means[split]
        return self.query(min(means, key=lambda k: (-means[k], k)), split)

    def percentile_of(self, acc: float, split: str) -> float:
        """% of the table's architectures whose mean accuracy is at most ``acc`` (the best one: 100)."""
        self._check_split(split)
        return percentile_in(self._sorted[split], acc)

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DataError(f"split {split!r} is not in this table (splits: {', '.join(self.splits)})")


def percentile_in(sorted_means: np.ndarray, acc: float) -> float:
    """% of ``sorted_means`` (ascending) at most ``acc``: the benchmark's one definition of a percentile."""
    return 100.0 * float(np.searchsorted(sorted_means, acc, side="right")) / len(sorted_means)


def check_checksum(path: Path, raw: bytes) -> None:
    """One line if the table's bytes do not match the sha256 recorded beside it."""
    recorded_path = Path(str(path) + ".sha256")
    try:
        recorded = recorded_path.read_text().split()[0]
    except (OSError, IndexError) as err:
        raise DataError(f"bench table {path} has no checksum file {recorded_path.name} "
                        "(write it with scripts/build_bench.py --finalize, or load with verify=False)") from err
    actual = hashlib.sha256(raw).hexdigest()
    if actual != recorded:
        raise DataError(f"bench table {path} does not match its checksum ({actual[:12]} != {recorded[:12]} in "
                        f"{recorded_path.name}): the file was changed or truncated; restore it from git")
