"""The baselines a search must beat on the table: random sampling, parameter count, and random search at the
search's cost.

Random sampling draws one genotype uniformly (the cells a genotype can write, as ``model.genotype=random``
draws them), so an architecture written by several genotypes is drawn more often; its expected ground
truth comes from the table alone. Random search (Li & Talwalkar 2019) spends a search's budget on K
random architectures instead: each trained briefly in the same federation, the one best on the clients'
val splits picked (never on test data), and its ground truth looked up.

Regularized evolution (Real et al. 2019) and random search over the table's queries are the query-based
references: each query stands for one training at the table's budget; their fitness reads one seed's test
accuracy (the table keeps no validation accuracy), so they are optimistic references for how many trainings
a search without weight sharing needs, not baselines at a weight-sharing search's cost.

Successive halving spends random search's budget in rungs: many candidates briefly, the better half longer.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from federated_nas.bench.space import INPUTS, Cell, CellSpace, canonical, format_key
from federated_nas.bench.table import Bench
from federated_nas.bench.train import Budget, NetworkShape, build_network, train_fedavg
from federated_nas.data.federated_data import FederatedData
from federated_nas.errors import ConfigError
from federated_nas.models.budget import state_bytes


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


def parameter_count(bench: Bench, split: str) -> dict:
    """The zero-cost reference: the space ranked by parameter count, no training, no search. Its pick is the
    largest architecture (ties: their mean); ``kendall_tau`` is parameters against the ground truth, the τ a
    search's own ranking of the space has to beat to know more than the size of a cell."""
    from federated_nas.bench.build import kendall

    entries = [bench.query(key, split) for key in bench.keys()]
    most = max(e.params for e in entries)
    picked = [e for e in entries if e.params == most]
    return {"accuracy": float(np.mean([e.mean for e in picked])),
            "percentile": float(np.mean([e.percentile for e in picked])),
            "regret": float(np.mean([e.regret for e in picked])), "keys": [e.key for e in picked],
            "kendall_tau": kendall([e.params for e in entries], [e.mean for e in entries])}


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


def halving_budgets(client_steps: int, candidates: int, base: Budget) -> list[Budget]:
    """Successive halving's rungs at a search's cost: ``candidates`` (a power of 2), halved each rung down to 2,
    every rung spending an equal share of ``client_steps``; so later rungs train fewer candidates for longer."""
    if candidates < 2 or candidates & (candidates - 1):
        raise ConfigError(f"successive halving needs a power of 2 of at least 2 candidates, got {candidates}")
    rungs = candidates.bit_length() - 1  # K, K/2, ..., 2
    return [budget_for_cost(client_steps // rungs, candidates >> rung, base) for rung in range(rungs)]


@dataclass
class RandomSearch:
    """One random search (or successive halving): each rung's candidates with their val accuracy, the pick,
    and what it cost."""

    seed: int
    split: str
    candidates: list[tuple[str, float]]  # (key, val accuracy after the brief training): the first rung
    picked: str
    client_steps: int
    seconds: float
    bytes_communicated: int  # every candidate's weights and BatchNorm statistics, to and from each client a round
    rungs: list[list[tuple[str, float]]] | None = None  # successive halving: every rung's, the first included

    def as_dict(self) -> dict:
        return asdict(self)


def random_search(space: CellSpace, data: FederatedData, split: str, candidates: int, budget: Budget,
                  shape: NetworkShape, seed: int) -> RandomSearch:
    """Train ``candidates`` random architectures at ``budget`` (seeded by ``seed``) and pick the best on val."""
    return successive_halving(space, data, split, candidates, [budget], shape, seed)


def successive_halving(space: CellSpace, data: FederatedData, split: str, candidates: int, budgets: list[Budget],
                       shape: NetworkShape, seed: int) -> RandomSearch:
    """Random search with rungs (Jamieson & Talwalkar 2016): the same ``candidates`` random architectures as
    random search of this ``seed``, trained at ``budgets[0]``; the better half on val trained again, from
    scratch, at the next budget, and so on; the best on val of the last rung is the pick. One budget: random
    search. A candidate keeps its initial weights' seed in every rung, so a rung differs only in its budget."""
    keys = random_keys(space, candidates, seed)
    survivors = list(range(candidates))
    rungs, seconds, traffic, steps = [], 0.0, 0, 0
    for rung, budget in enumerate(budgets):
        if rung:  # the better half on the last rung's val accuracy (ties: the earlier drawn)
            val = dict(zip(survivors, (acc for _, acc in rungs[-1])))
            survivors = sorted(sorted(survivors, key=lambda i: -val[i])[:max(1, len(survivors) // 2)])
        trained = []
        for index in survivors:
            genotype = space.genotype_of(keys[index])
            result = train_fedavg(genotype, data, budget, shape, seed=1000 * seed + index, validate=True, test=False)
            trained.append((keys[index], float(result.val_acc)))
            seconds += result.train_seconds + result.eval_seconds
            with torch.device("meta"):  # sizes only: no weights allocated, no random draws
                size = state_bytes(build_network(genotype, data, shape).state_dict())
            traffic += 2 * budget.rounds * budget.clients_per_round * size
            steps += budget.rounds * budget.clients_per_round * budget.local_steps
        rungs.append(trained)
    picked = max(rungs[-1], key=lambda pair: pair[1])[0]
    return RandomSearch(seed=seed, split=split, candidates=rungs[0], picked=picked, client_steps=steps,
                        seconds=seconds, bytes_communicated=traffic, rungs=rungs if len(budgets) > 1 else None)


# --- query-based search over the table: regularized evolution against random search, at equal queries ---------

def mutate(cell: Cell, primitives: tuple[str, ...], rng: random.Random) -> Cell:
    """One change of a raw cell, as Real et al. mutate a NASNet cell: one edge's op for another op, or one edge's
    input for another earlier node (a node's two inputs stay distinct; node 0 reads both cell inputs, so its
    edges change op only)."""
    node_index = rng.randrange(len(cell))
    node = list(cell[node_index])
    edge = rng.randrange(len(node))
    source, op = node[edge]
    sources = {s for s, _ in node}
    free = [s for s in range(node_index + INPUTS) if s not in sources]
    if free and rng.random() < 0.5:
        node[edge] = (rng.choice(free), op)
    else:
        node[edge] = (source, rng.choice([p for p in primitives if p != op]))
    return (*cell[:node_index], tuple(sorted(node)), *cell[node_index + 1:])


@dataclass
class QuerySearch:
    """One query-based search on the table: every query's (key, fitness) in order and, after each, the key of
    the highest fitness so far (the architecture the search would return then)."""

    method: str
    seed: int
    split: str
    queries: list[tuple[str, float]]
    picked: list[str]


def _fitness(bench: Bench, key: str, split: str, rng: random.Random) -> float:
    """One training's accuracy: one seed of the table at random, so a query is as noisy as training the
    architecture once (the table holds test accuracies only, so this fitness reads test data: see the caller)."""
    return rng.choice(bench.query(key, split).accs)


def _picks(queries: list[tuple[str, float]]) -> list[str]:
    best, picked = None, []
    for key, fitness in queries:
        if best is None or fitness > best[1]:
            best = (key, fitness)
        picked.append(best[0])
    return picked


def regularized_evolution(bench: Bench, split: str, queries: int, population: int = 20, sample: int = 5,
                          seed: int = 0) -> QuerySearch:
    """Regularized evolution (Real et al. 2019) with ``queries`` table queries: ``population`` random genotypes,
    then each cycle mutates the fittest of ``sample`` members drawn at random and replaces the oldest member."""
    if not 1 <= sample <= population or queries < 1:
        raise ConfigError(f"evolution needs 1 <= sample <= population and queries >= 1; got sample {sample}, "
                          f"population {population}, queries {queries}")
    rng = random.Random(seed)
    cells = list(bench.space.raw_cells())
    members: deque = deque()
    history: list[tuple[str, float]] = []
    while len(history) < queries:
        if len(members) < population:
            cell = rng.choice(cells)
        else:
            parent = max(rng.sample(list(members), sample), key=lambda member: member[1])
            cell = mutate(parent[0], bench.space.primitives, rng)
        key = format_key(*canonical(cell))
        fitness = _fitness(bench, key, split, rng)
        members.append((cell, fitness))
        if len(members) > population:
            members.popleft()
        history.append((key, fitness))
    return QuerySearch("regularized_evolution", seed, split, history, _picks(history))


def random_queries(bench: Bench, split: str, queries: int, seed: int = 0) -> QuerySearch:
    """Random search over the table at ``queries`` queries: random genotypes, the fittest one kept (the fitness
    and its noise as evolution's)."""
    rng = random.Random(seed)
    cells = list(bench.space.raw_cells())
    history = []
    for _ in range(queries):
        key = format_key(*canonical(rng.choice(cells)))
        history.append((key, _fitness(bench, key, split, rng)))
    return QuerySearch("random_queries", seed, split, history, _picks(history))


def query_search_curves(bench: Bench, split: str, budgets: list[int], repeats: int, population: int = 20,
                        sample: int = 5) -> dict[str, dict[int, dict[str, tuple[float, float]]]]:
    """method -> queries -> (mean, std) over ``repeats`` seeds of the picked architecture's ground truth
    (3-seed mean accuracy, percentile, regret), for evolution and random search at each budget."""
    longest = max(budgets)
    runs = {"regularized_evolution": [regularized_evolution(bench, split, longest, population, sample, seed)
                                      for seed in range(repeats)],
            "random_queries": [random_queries(bench, split, longest, seed) for seed in range(repeats)]}
    curves: dict = {}
    for method, searches in runs.items():
        curves[method] = {}
        for budget in budgets:
            entries = [bench.query(search.picked[budget - 1], split) for search in searches]
            curves[method][budget] = {
                name: (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
                for name, values in (("accuracy", [e.mean for e in entries]),
                                     ("percentile", [e.percentile for e in entries]),
                                     ("regret", [e.regret for e in entries]))}
    return curves
