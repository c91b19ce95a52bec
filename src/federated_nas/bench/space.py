"""The benchmark's cell space: every architecture, one canonical key per isomorphism class.

Why a key and not the genotype: the same function can be written as many genotypes (the two
intermediate nodes listed in either order, a node's edges in either order), and a tabular
benchmark must answer the same for all of them. Two cells are the same architecture when a
relabelling of their intermediate nodes maps one onto the other, edges with their ops and the
set of concatenated outputs included; nodes that reach no output are dropped first (they are
computed but never used). The concatenation order is not part of the key: the next cell's 1x1
preprocessing and the classifier after global pooling are invariant to a permutation of channels.

A cell is a tuple of nodes, a node a sorted tuple of ``(source, op)`` edges; sources 0 and 1
are the cell inputs (the outputs of the two cells before), source ``i >= 2`` is node ``i - 2``.
The network stacks the same cell in every layer, reductions included (``search_space=bench``
ties them), so an architecture is one cell.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from federated_nas.errors import DataError
from federated_nas.search_space.genotypes import Genotype
from federated_nas.search_space.operations import PRIMITIVES

Node = tuple[tuple[int, str], ...]  # sorted (source, op) edges
Cell = tuple[Node, ...]

# the benchmark's ops: a pooling op, the identity (a learned 1x1 reduce in reduction cells) and two cheap convs
BENCH_PRIMITIVES = ("max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
SHORT = {"none": "none", "max_pool_3x3": "max3", "avg_pool_3x3": "avg3", "skip_connect": "skip",
         "sep_conv_3x3": "sep3", "sep_conv_5x5": "sep5", "dil_conv_3x3": "dil3", "dil_conv_5x5": "dil5"}
LONG = {short: name for name, short in SHORT.items()}
INPUTS = 2  # cell inputs, and edges per node (DARTS' derivation keeps each node's two strongest inputs)


def live_nodes(cell: Cell, concat: tuple[int, ...]) -> list[int]:
    """Indices (0-based) of the nodes some output depends on, in order."""
    live, stack = set(), [i - INPUTS for i in concat]
    while stack:
        node = stack.pop()
        if node not in live:
            live.add(node)
            stack.extend(source - INPUTS for source, _ in cell[node] if source >= INPUTS)
    return sorted(live)


def canonical(cell: Cell, concat: tuple[int, ...] | None = None) -> tuple[Cell, tuple[int, ...]]:
    """The smallest encoding of the cell over every topological relabelling of its live nodes.

    Brute force over permutations: cells have at most a handful of nodes (4! = 24 orders).
    ``concat`` defaults to every node. Returns the relabelled cell and its sorted outputs.
    """
    concat = tuple(range(INPUTS, INPUTS + len(cell))) if concat is None else tuple(concat)
    live = live_nodes(cell, concat)
    best = None
    for order in itertools.permutations(live):
        label = {old + INPUTS: new + INPUTS for new, old in enumerate(order)}
        label.update({i: i for i in range(INPUTS)})
        nodes = []
        for old in order:
            edges = [(label[source], op) for source, op in cell[old]]
            if any(source >= label[old + INPUTS] for source, _ in edges):
                break  # not topological: a node would read a later one
            nodes.append(tuple(sorted(edges)))
        else:
            encoding = (tuple(nodes), tuple(sorted(label[i] for i in concat)))
            best = encoding if best is None or encoding < best else best
    return best


def format_key(cell: Cell, concat: tuple[int, ...]) -> str:
    """``op~source+op~source|...``, node by node; the outputs follow after ``>`` unless they are every node."""
    body = "|".join("+".join(f"{SHORT[op]}~{source}" for source, op in node) for node in cell)
    every = tuple(range(INPUTS, INPUTS + len(cell)))
    return body if tuple(concat) == every else body + ">" + ",".join(str(i) for i in concat)


def parse_key(key: str) -> tuple[Cell, tuple[int, ...]]:
    """The cell and outputs a key names (the inverse of ``format_key``)."""
    try:
        body, _, outputs = str(key).partition(">")
        cell = tuple(tuple(sorted((int(source), LONG[op]) for op, source in (edge.split("~") for edge in node.split("+"))))
                     for node in body.split("|"))
        concat = tuple(int(i) for i in outputs.split(",")) if outputs else tuple(range(INPUTS, INPUTS + len(cell)))
    except (KeyError, ValueError) as err:
        raise DataError(f"not an architecture key: {key!r} (expected e.g. 'skip~0+sep3~1|max3~0+dil3~2')") from err
    return cell, concat


def cell_of_genes(genes: list[tuple[str, int]], concat: list[int]) -> tuple[Cell, tuple[int, ...]]:
    """A genotype cell (DARTS' list of (op, source), two per node) as a ``Cell``."""
    if len(genes) % INPUTS:
        raise DataError(f"a cell of {len(genes)} edges: each node needs {INPUTS}")
    nodes = tuple(tuple(sorted((int(source), str(op)) for op, source in genes[i:i + INPUTS]))
                  for i in range(0, len(genes), INPUTS))
    return nodes, tuple(int(i) for i in concat)


@dataclass(frozen=True)
class CellSpace:
    """DARTS cells of ``steps`` nodes, each reading two distinct earlier nodes through ops of ``primitives``,
    every node concatenated: the space a search with ``search_space=bench`` derives its genotype from."""

    primitives: tuple[str, ...] = BENCH_PRIMITIVES
    steps: int = 2

    def __post_init__(self):
        unknown = [op for op in self.primitives if op not in PRIMITIVES or op == "none"]
        if unknown or not self.primitives or len(set(self.primitives)) != len(self.primitives):
            raise DataError(f"bench primitives must be distinct ops of {', '.join(PRIMITIVES[1:])}; got {self.primitives}")
        if not 1 <= self.steps <= 4:
            raise DataError(f"bench steps must be 1..4 (a space small enough to enumerate), got {self.steps}")

    @property
    def name(self) -> str:
        return f"s{self.steps}-" + "-".join(SHORT[op] for op in self.primitives)

    def raw_cells(self) -> Iterator[Cell]:
        """Every cell as a genotype can write it (sources sorted within a node), duplicates included."""
        per_node = [[tuple(zip(sources, ops)) for sources in itertools.combinations(range(node + INPUTS), INPUTS)
                     for ops in itertools.product(self.primitives, repeat=INPUTS)]
                    for node in range(self.steps)]
        yield from itertools.product(*per_node)

    def raw_keys(self) -> Iterator[tuple[Cell, str]]:
        """Every raw cell with the key of the architecture it writes: the one cell -> key mapping."""
        for cell in self.raw_cells():
            yield cell, format_key(*canonical(cell))

    def enumerate(self) -> dict[str, Genotype]:
        """key -> a representative genotype, for every architecture of the space, keys sorted."""
        keys = {key for _, key in self.raw_keys()}
        return {key: self.genotype_of(key) for key in sorted(keys)}

    def counts(self) -> dict[str, int]:
        """How many cells a genotype can write (raw) and how many distinct architectures remain (unique)."""
        keys = [key for _, key in self.raw_keys()]
        return {"raw": len(keys), "unique": len(set(keys))}

    def key_of(self, genotype: Genotype | dict | str | Path) -> str:
        """The key of a genotype of this space: a Genotype, its dict, or a genotype.json (a search's)."""
        if isinstance(genotype, (str, Path)):
            genotype = Genotype.load(genotype)
        elif isinstance(genotype, dict):
            genotype = Genotype.from_dict(genotype)
        keys = {kind: self._cell_key(getattr(genotype, kind), getattr(genotype, f"{kind}_concat"), kind)
                for kind in ("normal", "reduce")}
        if keys["normal"] != keys["reduce"]:
            raise DataError(f"not an architecture of the bench space: its reduce cell ({keys['reduce']}) differs from "
                            f"its normal cell ({keys['normal']}); a search of search_space=bench ties them")
        return keys["normal"]

    def _cell_key(self, genes: list[tuple[str, int]], concat: list[int], kind: str) -> str:
        cell, outputs = cell_of_genes(genes, concat)
        unknown = sorted({op for node in cell for _, op in node} - set(self.primitives))
        if unknown:
            raise DataError(f"{kind} cell uses {', '.join(unknown)}, outside the bench ops {', '.join(self.primitives)}")
        if len(cell) != self.steps:
            raise DataError(f"{kind} cell has {len(cell)} nodes; the bench space has {self.steps}")
        for index, node in enumerate(cell):
            sources = [source for source, _ in node]
            if len(set(sources)) != INPUTS or not all(0 <= s < index + INPUTS for s in sources):
                raise DataError(f"{kind} cell: node {index} reads {sources}; it must read {INPUTS} distinct earlier nodes")
        if sorted(set(outputs)) != list(range(INPUTS, INPUTS + self.steps)):
            raise DataError(f"{kind} cell concatenates {list(outputs)}; the bench space concatenates every node")
        return format_key(*canonical(cell, outputs))

    def genotype_of(self, key: str) -> Genotype:
        """A genotype of the architecture ``key`` names (its canonical labelling), the same cell in both kinds."""
        cell, concat = parse_key(key)
        if canonical(cell, concat) != (cell, tuple(sorted(concat))):
            raise DataError(f"not a canonical architecture key: {key!r} (use key_of on a genotype)")
        genes = [(op, source) for node in cell for source, op in node]
        return Genotype(normal=genes, normal_concat=list(concat), reduce=list(genes), reduce_concat=list(concat))


def space_from_dict(data: dict) -> CellSpace:
    """The space a table records (``{"primitives": [...], "steps": n}``)."""
    try:
        return CellSpace(tuple(data["primitives"]), int(data["steps"]))
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"not a bench space record (need primitives and steps): {json.dumps(data)[:80]}") from err
