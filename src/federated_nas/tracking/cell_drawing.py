"""Pictures of genotype cells in the style of DARTS' figures, drawn with matplotlib alone.

DARTS renders cells with the graphviz binary, which cluster nodes and CI images rarely have;
matplotlib is already a dependency, so cells are laid out by hand: the two cell inputs on the
left, the intermediate nodes on a diagonal in the middle, the cell output on the right.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from federated_nas.search_space.genotypes import Genotype, cell_targets
from federated_nas.search_space.operations import PRIMITIVES
from federated_nas.tracking.plots import save_figure

import matplotlib.pyplot as plt  # noqa: E402  (after plots.py has chosen the headless backend)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

# One colour per op, fixed, so the same op looks the same in every picture of every run.
OP_COLOURS: dict[str, str] = dict(zip(PRIMITIVES, (
    "#9e9e9e",  # none
    "#1f77b4",  # max_pool_3x3
    "#17becf",  # avg_pool_3x3
    "#2ca02c",  # skip_connect
    "#d62728",  # sep_conv_3x3
    "#ff7f0e",  # sep_conv_5x5
    "#9467bd",  # dil_conv_3x3
    "#8c564b",  # dil_conv_5x5
)))
UNKNOWN_OP_COLOUR = "#000000"  # ops of another search space still get drawn

INPUT_LABELS = (r"$c_{k-2}$", r"$c_{k-1}$")
OUTPUT_LABEL = r"$c_{k}$"
NODE_DX, NODE_DY = 1.9, 1.7  # diagonal step between consecutive intermediate nodes
PARALLEL_RAD_STEP = 0.3  # extra curvature per repeated (source, target) pair
INCHES_PER_UNIT = 0.75  # figure size per data unit: keeps the small labels legible
SKIP_RAD = -0.5  # curvature of edges that would otherwise run along the diagonal through other nodes


@dataclass(frozen=True)
class CellEdge:
    op: str
    source: int  # graph node: 0, 1 the cell inputs, 2.. the intermediate nodes
    target: int


@dataclass(frozen=True)
class CellGraph:
    steps: int
    edges: tuple[CellEdge, ...]
    concat: tuple[int, ...]


def cell_graph(edges: list[tuple[str, int]], concat: list[int]) -> CellGraph:
    """Check a genotype cell and resolve which node each edge feeds.

    The rule that reads DARTS' node-by-node edge list is ``genotypes.cell_targets``.
    """
    targets = cell_targets(edges, concat)
    resolved = [CellEdge(str(op), int(source), target) for (op, source), target in zip(edges, targets)]
    concat = [int(node) for node in concat]
    steps = max(concat) - 1
    return CellGraph(steps, tuple(resolved), tuple(concat))


def op_colour(op: str) -> str:
    return OP_COLOURS.get(op, UNKNOWN_OP_COLOUR)


def node_positions(steps: int) -> dict[int | str, tuple[float, float]]:
    """Inputs left, intermediate nodes on a diagonal falling to the right, output right of them."""
    top = NODE_DY * (steps - 1) / 2
    positions: dict[int | str, tuple[float, float]] = {
        0: (0.0, top / 2 + 0.9),
        1: (0.0, -top / 2 - 0.9),
    }
    for node in range(2, steps + 2):
        index = node - 2
        positions[node] = (2.6 + NODE_DX * index, top - NODE_DY * index)
    positions["out"] = (2.6 + NODE_DX * (steps - 1) + 2.4, 0.0)
    return positions


def drawing_limits(steps: int) -> tuple[float, float, float, float]:
    """(x_min, x_max, y_min, y_max) of a cell's drawing, margins for boxes and bent edges included."""
    positions = node_positions(steps)
    xs = [x for x, _ in positions.values()]
    ys = [y for _, y in positions.values()]
    return min(xs) - 0.7, max(xs) + 0.7, min(ys) - 0.6, max(ys) + 0.6


def draw_cell_on_axes(ax: Axes, edges: list[tuple[str, int]], concat: list[int], title: str | None = None,
                      compact: bool = False) -> None:
    """Draw one cell onto ``ax``; ``compact`` shrinks fonts for thumbnails in a grid."""
    graph = cell_graph(edges, concat)
    positions = node_positions(graph.steps)
    label_size, node_size = (5.0, 6.5) if compact else (8.0, 9.5)
    boxes = {key: _node_box(ax, key, xy, graph, node_size) for key, xy in positions.items()}

    repeats: Counter[tuple[int, int]] = Counter()
    for edge in graph.edges:
        repeat = repeats[(edge.source, edge.target)]
        repeats[(edge.source, edge.target)] += 1
        rad = _edge_rad(edge.source, edge.target, repeat)
        start, end = positions[edge.source], positions[edge.target]
        colour = op_colour(edge.op)
        _arrow(ax, boxes[edge.source], boxes[edge.target], start, end, rad, colour, 1.3)
        label_x, label_y = _arc_midpoint(start, end, rad)
        ax.text(label_x, label_y, edge.op, fontsize=label_size, color=colour, ha="center", va="center", zorder=4,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": colour, "alpha": 0.9,
                      "linewidth": 0.6})
    for node in graph.concat:
        _arrow(ax, boxes[node], boxes["out"], positions[node], positions["out"], 0.0, "#555555", 0.9)

    x_min, x_max, y_min, y_max = drawing_limits(graph.steps)
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(y_min, y_max)
    ax.set_aspect("equal")  # arc label positions are computed in data units; equal aspect keeps them on the arc
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=node_size)


def draw_cell(edges: list[tuple[str, int]], concat: list[int], path: str | Path, title: str | None = None) -> Path:
    """One cell as an image file (format from the suffix, PNG by default)."""
    graph = cell_graph(edges, concat)  # fail on a bad cell before a figure exists
    x_min, x_max, y_min, y_max = drawing_limits(graph.steps)
    fig, ax = plt.subplots(figsize=(INCHES_PER_UNIT * (x_max - x_min), INCHES_PER_UNIT * (y_max - y_min) + 0.4))
    try:
        draw_cell_on_axes(ax, edges, concat, title)
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def draw_genotype(genotype: Genotype, directory: str | Path, stem: str = "", title: str | None = None) -> list[Path]:
    """``normal.png`` and ``reduce.png`` in ``directory``; a stem joins with one underscore (``round_005_normal.png``).

    ``title`` (run, round, accuracy) follows the cell's kind in each picture's title.
    """
    directory = Path(directory)
    prefix = f"{stem.rstrip('_')}_" if stem else ""
    suffix = f"\n{title}" if title else ""
    return [
        draw_cell(genotype.normal, genotype.normal_concat, directory / f"{prefix}normal.png", "normal cell" + suffix),
        draw_cell(genotype.reduce, genotype.reduce_concat, directory / f"{prefix}reduce.png",
                  "reduction cell" + suffix),
    ]


def _node_box(ax: Axes, key: int | str, xy: tuple[float, float], graph: CellGraph,
              font_size: float) -> FancyBboxPatch:
    """A rounded box with the node's name; intermediate nodes the output ignores are drawn faded."""
    if key == "out":
        label, width, face = OUTPUT_LABEL, 0.9, "#fde68a"
    elif key in (0, 1):
        label, width, face = INPUT_LABELS[key], 0.9, "#a7f3d0"
    else:
        label, width = str(key - 2), 0.5
        face = "#bfdbfe" if key in graph.concat else "#e5e7eb"
    height = 0.5
    box = FancyBboxPatch((xy[0] - width / 2, xy[1] - height / 2), width, height, boxstyle="round,pad=0.06",
                         facecolor=face, edgecolor="#374151", linewidth=0.8, zorder=3)
    ax.add_patch(box)
    ax.text(xy[0], xy[1], label, fontsize=font_size, ha="center", va="center", zorder=5)
    return box


def _edge_rad(source: int, target: int, repeat: int) -> float:
    """Curvature: bend edges that skip intermediate nodes off the diagonal, fan out repeated pairs."""
    base = SKIP_RAD if source >= 2 and target - source >= 2 else 0.0
    offset = PARALLEL_RAD_STEP * ((repeat + 1) // 2) * (1 if repeat % 2 else -1)
    return base + offset


def _arc_midpoint(start: tuple[float, float], end: tuple[float, float], rad: float) -> tuple[float, float]:
    """Midpoint of matplotlib's arc3 curve: the quadratic Bezier's t=0.5 point."""
    dx, dy = end[0] - start[0], end[1] - start[1]
    return (start[0] + end[0]) / 2 + rad * dy / 2, (start[1] + end[1]) / 2 - rad * dx / 2


def _arrow(ax: Axes, box_from: FancyBboxPatch, box_to: FancyBboxPatch, start: tuple[float, float],
           end: tuple[float, float], rad: float, colour: str, width: float) -> None:
    ax.add_patch(FancyArrowPatch(start, end, connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                 mutation_scale=9, color=colour, linewidth=width, patchA=box_from, patchB=box_to,
                                 shrinkA=1, shrinkB=1, zorder=2))
