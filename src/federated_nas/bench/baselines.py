"""The baselines a search must beat on the table: random sampling, and random search at the search's cost.

Random sampling draws one genotype uniformly (the cells a genotype can write, as ``model.genotype=random``
draws them), so an architecture written by several genotypes is drawn more often; its expected ground
truth comes from the table alone. Random search (Li & Talwalkar 2019) spends a search's budget on K
random architectures instead: each trained briefly in the same federation, the one best on the clients'
val splits picked (never on test data), and its ground truth looked up.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, replace

import numpy as np

from federated_nas.bench.space import CellSpace
from federated_nas.bench.table import Bench
from federated_nas.bench.train import Budget, NetworkShape, train_fedavg
from federated_nas.data.federated_data import FederatedData
from federated_nas.errors import ConfigError


def genotype_multiplicity(space: CellSpace) -> Counter:
    """key -> how many genotypes (raw cells) write that architecture."""
    return Counter(key for _, key in space.raw_keys())


def random_sampling(bench: Bench, split: str) -> dict[str, float]:
    """The expected ground truth of one uniformly random genotype: accuracy (mean, std), percentile, regret,
    and the chance to land in the top 5% of the space."""
    weights = genotype_multiplicity(bench.space)
    keys = bench.keys()
    p = np.array([weights[key] for key in keys], float)
    p /= p.sum()
    entries = [bench.query(key, split) for key in keys]
    acc = np.array([e.mean for e in entries])
    percentile = np.array([e.percentile for e in entries])
    mean = float(p @ acc)
    top = percentile >= 95.0
    return {"accuracy": mean, "accuracy_std": float(math.sqrt(p @ (acc - mean) ** 2)),
            "percentile": float(p @ percentile), "regret": float(p @ np.array([e.regret for e in entries])),
            "p_top5pct": float(p[top].sum())}


def random_keys(space: CellSpace, count: int, seed: int) -> list[str]:
    """``count`` architectures, each from a uniformly random genotype (with replacement, as independent draws)."""
    keys = [key for _, key in space.raw_keys()]
    rng = random.Random(seed)
    return [rng.choice(keys) for _ in range(count)]


def budget_for_cost(client_steps: int, candidates: int, base: Budget) -> Budget:
    """``base`` with rounds cut so ``candidates`` trainings together process ``client_steps`` batches."""
    if candidates < 1:
        raise ConfigError(f"random search needs at least 1 candidate, got {candidates}")
    per_round = base.clients_per_round * base.local_steps
    rounds = client_steps // (candidates * per_round)
    if rounds < 1:
        raise ConfigError(f"{client_steps} client steps cannot train {candidates} candidates for one round of "
                          f"{base.clients_per_round} clients x {base.local_steps} steps; use fewer candidates")
    return replace(base, rounds=int(rounds))


@dataclass
class RandomSearch:
    """One random search: the candidates with their val accuracy, the pick, and what it cost."""

    seed: int
    split: str
    candidates: list[tuple[str, float]]  # (key, val accuracy after the brief training)
    picked: str
    client_steps: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def random_search(space: CellSpace, data: FederatedData, split: str, candidates: int, budget: Budget,
                  shape: NetworkShape, seed: int) -> RandomSearch:
    """Train ``candidates`` random architectures at ``budget`` (seeded by ``seed``) and pick the best on val."""
    trained = []
    seconds = 0.0
    for index, key in enumerate(random_keys(space, candidates, seed)):
        result = train_fedavg(space.genotype_of(key), data, budget, shape, seed=1000 * seed + index, validate=True)
        trained.append((key, float(result.val_acc)))
        seconds += result.train_seconds + result.eval_seconds
    picked = max(trained, key=lambda pair: pair[1])[0]
    steps = candidates * budget.rounds * budget.clients_per_round * budget.local_steps
    return RandomSearch(seed=seed, split=split, candidates=trained, picked=picked, client_steps=steps, seconds=seconds)
