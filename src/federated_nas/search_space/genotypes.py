"""Genotypes: the discrete architecture a search derives, in DARTS' four-field format.

The JSON written here has exactly DARTS' ``Genotype`` fields (normal, normal_concat,
reduce, reduce_concat), so anyone's DARTS evaluation code can read it back.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from federated_nas.errors import DataError
from federated_nas.search_space.operations import PRIMITIVES

Edge = tuple[str, int]  # (op name, input node index); inputs 0 and 1 are the cell inputs
CELL_KINDS = ("normal", "reduce")  # a DARTS network's two cell kinds: its genotype has one of each


class ArchitectureRecord:
    """What every searched architecture (a dataclass with ``from_dict``) shares: its JSON, an atomic
    save, and a load whose bad input is one line. ``kind`` names it in that line."""

    kind = "genotype"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def save(self, path: str | Path) -> Path:
        """Write atomically, so a crash never leaves half a genotype on disk."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path):
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"cannot read {cls.kind} {path}: {err}") from err


@dataclass(frozen=True)
class Genotype(ArchitectureRecord):
    normal: list[Edge]
    normal_concat: list[int]
    reduce: list[Edge]
    reduce_concat: list[int]

    @classmethod
    def from_dict(cls, data: dict) -> "Genotype":
        """The genotype of ``data``, checked whole: every op and node index of both cells, not only those
        a small network happens to build."""
        try:
            genotype = cls(
                normal=[(str(op), int(j)) for op, j in data["normal"]],
                normal_concat=[int(i) for i in data["normal_concat"]],
                reduce=[(str(op), int(j)) for op, j in data["reduce"]],
                reduce_concat=[int(i) for i in data["reduce_concat"]],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"not a genotype (need normal, normal_concat, reduce, reduce_concat): {err}") from err
        for kind in CELL_KINDS:
            problem = cell_problem(getattr(genotype, kind), getattr(genotype, f"{kind}_concat"))
            if problem:
                raise DataError(f"not a valid genotype: {kind}: {problem}")
        return genotype

    def count(self, op: str) -> int:
        return sum(name == op for name, _ in self.normal + self.reduce)


def cell_targets(edges: list[Edge], concat: list[int]) -> list[int]:
    """The node each edge of a cell feeds, the cell checked whole (``DataError`` naming the problem).

    DARTS lists edges node by node with no node count, so the count comes from ``concat`` (its largest
    entry is the last intermediate node) and every node has the same number of edges (two in DARTS,
    fewer in pruned FedMetaNAS cells).
    """
    concat = [int(node) for node in concat]
    if not concat:
        raise DataError("cell has an empty concat list: no node feeds the cell output")
    steps = max(concat) - 1
    if steps < 1:
        raise DataError(f"cell concat {concat} names no intermediate node (they are numbered from 2)")
    if min(concat) < 0 or len(set(concat)) != len(concat):
        raise DataError(f"cell concat {concat} has a negative or repeated node")
    if not edges or len(edges) % steps:
        raise DataError(f"cell has {len(edges)} edges, not a positive multiple of its {steps} intermediate "
                        f"nodes (inferred from concat {concat})")
    per_node = len(edges) // steps
    targets = []
    for position, (op, source) in enumerate(edges):
        target = 2 + position // per_node
        if not 0 <= int(source) < target:
            raise DataError(f"cell edge {position} ({op}, {source}) feeds node {target}: its input must be "
                            f"one of nodes 0..{target - 1}")
        targets.append(target)
    return targets


def cell_problem(edges: list[Edge], concat: list[int]) -> str | None:
    """What is wrong with one cell (its structure, or an op that is no DARTS primitive), or None."""
    try:
        cell_targets(edges, concat)
    except DataError as err:
        return str(err)
    unknown = [(position, op) for position, (op, _) in enumerate(edges) if op not in PRIMITIVES]
    if unknown:
        return f"edge {unknown[0][0]}: unknown op {unknown[0][1]!r} (known: {', '.join(PRIMITIVES)})"
    return None


def random_genotype(seed: int, steps: int = 4, multiplier: int = 4, primitives=PRIMITIVES,
                    inputs_per_node: int = 2) -> Genotype:
    """A uniformly random architecture of the DARTS space: the sanity baseline of NAS (Li & Talwalkar 2019).

    Each node of each cell reads ``inputs_per_node`` distinct earlier nodes, each through an op drawn
    uniformly from the primitives without ``none``, as a derived genotype does. Python's own generator,
    seeded here, so the cell depends on ``seed`` alone, not on torch's global state.
    """
    draw = random.Random(seed)
    ops = [op for op in primitives if op != "none"]

    def cell() -> list[Edge]:
        return [(draw.choice(ops), source) for node in range(steps)
                for source in sorted(draw.sample(range(node + 2), inputs_per_node))]

    concat = list(range(2 + steps - multiplier, steps + 2))
    return Genotype(normal=cell(), normal_concat=concat, reduce=cell(), reduce_concat=concat)


def edge_index(steps: int) -> list[tuple[int, int]]:
    """(target node, source node) for every edge, in DARTS' alpha row order."""
    return [(node, source) for node in range(steps) for source in range(node + 2)]


def derive_cell(weights: torch.Tensor, steps: int, primitives=PRIMITIVES, inputs_per_node: int = 2,
                chosen: list[tuple[int, ...]] | None = None) -> list[Edge]:
    """DARTS' rule: keep each node's strongest incoming edges, ranked by their best non-none op.

    ``chosen`` fixes each node's input sources instead (FedMetaNAS' input combinations).
    Ties break towards the lower source index and the earlier primitive, so the result is a
    pure function of the weights.
    """
    weights = weights.detach().cpu().double()
    none = primitives.index("none") if "none" in primitives else None
    genes: list[Edge] = []
    row = 0
    for node in range(steps):
        rows = weights[row : row + node + 2]
        scored = []
        for source, op_weights in enumerate(rows):
            candidates = [(float(w), -k) for k, w in enumerate(op_weights) if k != none]
            best_weight, neg_k = max(candidates)
            scored.append((best_weight, -source, -neg_k))
        if chosen is not None:
            scored = [entry for entry in scored if -entry[1] in chosen[node]]
        for best_weight, neg_source, k in sorted(scored, reverse=True)[:inputs_per_node]:
            genes.append((primitives[k], -neg_source))
        row += node + 2
    return genes


def derive_genotype(alpha_normal: torch.Tensor, alpha_reduce: torch.Tensor, steps: int = 4,
                    multiplier: int = 4, primitives=PRIMITIVES,
                    chosen: dict[str, list[tuple[int, ...]] | None] | None = None) -> Genotype:
    """The genotype of architecture logits (softmax of alpha); ``chosen`` fixes each cell's node inputs."""
    chosen = chosen or {}
    concat = list(range(2 + steps - multiplier, steps + 2))
    return Genotype(
        normal=derive_cell(torch.softmax(alpha_normal, dim=-1), steps, primitives, chosen=chosen.get("normal")),
        normal_concat=concat,
        reduce=derive_cell(torch.softmax(alpha_reduce, dim=-1), steps, primitives, chosen=chosen.get("reduce")),
        reduce_concat=concat,
    )
