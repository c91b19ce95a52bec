"""Figures logged as run artifacts: the partition, the architecture weights, the per-round curves.

The "Agg" backend is selected before pyplot is imported because runs execute on
headless cluster nodes where no display exists.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from federated_nas.errors import DataError  # noqa: E402
from federated_nas.search_space.genotypes import edge_index  # noqa: E402

NOT_RECORDED = "not recorded"


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` atomically and close it: a reader (MLflow, a browser) never sees half an image."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # plain open keeps umask permissions
        try:
            fig.savefig(temp_path, format=path.suffix.lstrip(".") or "png", dpi=dpi)
            os.replace(temp_path, path)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise
    finally:
        if fig.canvas.manager is not None:  # a pyplot figure; one made as Figure() is not pyplot's to close
            plt.close(fig)
    return path


MAX_HEATMAP_INCHES = 16.0  # the partition heatmap's widest side (1,920 pixels at the default dpi)


def plot_partition_heatmap(
    counts: np.ndarray, path: str | Path, title: str = "Samples per class and client"
) -> Path:
    """Heatmap of a [classes, clients] count table, to see at a glance how non-IID a split is.

    Half an inch per client and class up to ``MAX_HEATMAP_INCHES``: beyond that one pixel column per
    client still shows the skew, and the canvas (and a run's memory) stays bounded at 1,000 clients.
    Drawn without pyplot (whose figure registry is not thread-safe): a run draws it on the thread
    that records its start (``runs.record_run_start``) while round 1 runs.
    """
    counts = np.asarray(counts)
    num_classes, num_clients = counts.shape
    fig = Figure(figsize=(min(MAX_HEATMAP_INCHES, max(4.0, 0.5 * num_clients + 2)),
                          min(MAX_HEATMAP_INCHES, max(3.0, 0.4 * num_classes + 1.5))))
    ax = fig.subplots()
    image = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="samples")
    ax.set_xlabel("client")
    ax.set_ylabel("class")
    ax.set_title(title)
    if num_classes <= 20 and num_clients <= 20:
        ax.set_xticks(range(num_clients))
        ax.set_yticks(range(num_classes))
        threshold = counts.max() / 2 if counts.size else 0
        for (row, column), value in np.ndenumerate(counts):
            color = "black" if value > threshold else "white"
            ax.text(column, row, str(int(value)), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_alpha_evolution(probabilities: np.ndarray, primitives: Sequence[str], path: str | Path,
                         title: str = "Architecture weights over rounds", row_name: str | None = None,
                         rounds: Sequence[int] | None = None) -> Path:
    """One heatmap per op of softmax(alpha) [rounds, edges, ops]: shows which ops each edge commits to, and when.

    Colours are relative to uniform (1/#ops, white): red above, blue below, each side stretched to
    this figure's own extreme, both printed in the title; early in a search every weight is near uniform and an
    absolute 0-1 scale shows one flat colour. ``rounds`` labels the columns (default 1, 2, ...).
    ``row_name`` (e.g. ``layer``) labels the rows ``layer 1, 2, ...``; None: DARTS edge names when they fit.
    """
    try:
        probabilities = np.asarray(probabilities, dtype=float)
    except (TypeError, ValueError) as err:
        raise DataError(f"alpha probabilities are not a numeric [rounds, edges, ops] array: {err}") from None
    if probabilities.ndim != 3 or probabilities.shape[2] != len(primitives) or 0 in probabilities.shape:
        raise DataError(f"alpha probabilities must be [rounds, edges, ops] with ops = {len(primitives)} primitives "
                        f"and no empty axis, got shape {probabilities.shape}")
    num_rounds, num_edges, num_ops = probabilities.shape
    rounds = list(range(1, num_rounds + 1)) if rounds is None else [int(r) for r in rounds]
    if len(rounds) != num_rounds:
        raise DataError(f"{len(rounds)} round labels for {num_rounds} rounds of alpha probabilities")
    uniform = 1.0 / num_ops
    low, high = float(probabilities.min()), float(probabilities.max())
    # white at uniform whatever this figure's range: diverging, each side stretched to its own end
    norm = TwoSlopeNorm(vcenter=uniform, vmin=min(low, uniform - 1e-6), vmax=max(high, uniform + 1e-6))
    columns = min(4, num_ops)
    rows = math.ceil(num_ops / columns)
    fig, axes = plt.subplots(rows, columns, squeeze=False, sharex=True, sharey=True, layout="constrained",
                             figsize=(2.6 * columns + 1.2, 0.2 * num_edges * rows + 1.3 * rows + 0.6))
    try:
        edge_labels = _edge_labels(num_edges) if row_name is None else [str(i + 1) for i in range(num_edges)]
        for k, ax in enumerate(axes.flat):
            if k >= num_ops:
                ax.axis("off")
                continue
            image = ax.imshow(probabilities[:, :, k].T, aspect="auto", cmap="RdBu_r", norm=norm,
                              interpolation="nearest")
            ax.set_title(primitives[k], fontsize=9)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _round_label(rounds, x)))
            if k % columns == 0:
                ax.set_ylabel(row_name or "edge (node←input)", fontsize=8)
                if edge_labels is not None:
                    ax.set_yticks(range(num_edges), edge_labels, fontsize=7)
            if k // columns == rows - 1 or k + columns >= num_ops:
                ax.set_xlabel("round", fontsize=8)
        fig.colorbar(image, ax=axes.ravel().tolist(), label=f"softmax(alpha); white: uniform 1/{num_ops}",
                     shrink=0.9)
        fig.suptitle(f"{title}\nrange {low:.3f} to {high:.3f}, uniform {uniform:.3f}", fontsize=10)
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def plot_round_curves(history: Sequence[Mapping[str, object]], path: str | Path, title: str | None = None) -> Path:
    """Accuracy, client spread, alpha entropy and skip count against rounds (from 1), from a run's history.

    Metrics are sparse (evaluation runs every few rounds; fixed-architecture runs have no alpha),
    so each series keeps only the rounds that recorded it, and an absent series says so. The
    entropy is divided by ln(#ops), so 1 is uniform and 0 one op per edge, whatever the space.
    """
    fig, axes = plt.subplots(2, 2, figsize=(9.0, 6.0), sharex=True)
    try:
        global_ax, client_ax, entropy_ax, skip_ax = axes.flat
        _plot_series(global_ax, history, "global_test_acc", "global test accuracy", "relaxed")
        if _series(history, "global_test_acc_discrete")[0]:
            _plot_series(global_ax, history, "global_test_acc_discrete", "global test accuracy", "discrete",
                         linestyle="--")
            global_ax.legend(fontsize=7)
        _plot_series(client_ax, history, "client_test_acc_mean", "client test accuracy (mean ± std)")
        rounds, means, stds = _banded_series(history, "client_test_acc_mean", "client_test_acc_std")
        if rounds:
            client_ax.fill_between(rounds, means - stds, means + stds, alpha=0.25)
        _plot_series(entropy_ax, history, "alpha_entropy_normalized", "alpha entropy / ln(#ops) (1: uniform)")
        if entropy_ax.lines:
            entropy_ax.set_ylim(0.0, 1.05)
        _plot_series(skip_ax, history, "skip_connect_count", "skip_connect count")
        skip_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in (entropy_ax, skip_ax):
            ax.set_xlabel("round")
        for ax in axes.flat:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelbottom=True)
            if not ax.lines:
                ax.set_yticks([])
                ax.text(0.5, 0.5, NOT_RECORDED, transform=ax.transAxes, ha="center", va="center", color="#6b7280")
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def plot_client_histogram(accuracies: Sequence[float], path: str | Path,
                          title: str = "Test accuracy per client") -> Path:
    """How the global model's accuracy spreads over clients; the mean alone hides clients left behind."""
    try:
        accuracies = np.asarray(accuracies, dtype=float)
    except (TypeError, ValueError) as err:
        raise DataError(f"client accuracies are not numbers: {err}") from None
    if accuracies.ndim != 1 or accuracies.size == 0 or not np.isfinite(accuracies).all():
        raise DataError(f"client accuracies must be a non-empty list of finite numbers, got shape {accuracies.shape}")
    fig, ax = plt.subplots(figsize=(5.0, 3.5))
    try:
        ax.hist(accuracies, bins=min(20, max(5, accuracies.size // 2)), color="#60a5fa", edgecolor="#1e3a8a")
        mean = float(accuracies.mean())
        ax.axvline(mean, color="#dc2626", linestyle="--", label=f"mean {mean:.3f}")
        ax.set_xlabel("test accuracy")
        ax.set_ylabel("clients")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def _series(history: Sequence[Mapping[str, object]], key: str) -> tuple[list[float], list[float]]:
    """(rounds, values) of the rounds that recorded ``key`` as a finite number.

    Where a round also has ``<key>_sampled`` (the last round, evaluated on the whole test set and on
    the sample the other rounds used), the sampled point is the curve's, like in MLflow.
    """
    rounds, values = [], []
    for position, record in enumerate(history):
        value = record.get(f"{key}_sampled", record.get(key))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            if "round" not in record:
                raise DataError(f"round history entry {position} has {key} but no 'round'")
            rounds.append(float(record["round"]) + 1)  # the history counts from 0, the log and MLflow from 1
            values.append(float(value))
    return rounds, values


def _banded_series(history: Sequence[Mapping[str, object]], mean_key: str,
                   spread_key: str) -> tuple[list[float], np.ndarray, np.ndarray]:
    """The rounds that recorded both a mean and its spread, for a ± band."""
    means = dict(zip(*_series(history, mean_key)))
    spreads = dict(zip(*_series(history, spread_key)))
    rounds = sorted(set(means) & set(spreads))
    return rounds, np.array([means[r] for r in rounds]), np.array([spreads[r] for r in rounds])


def _plot_series(ax: Axes, history: Sequence[Mapping[str, object]], key: str, title: str,
                 label: str | None = None, linestyle: str = "-") -> None:
    rounds, values = _series(history, key)
    ax.set_title(title, fontsize=9)
    if rounds:
        ax.plot(rounds, values, marker="o", markersize=3, linestyle=linestyle, label=label)


def _round_label(rounds: Sequence[int], position: float) -> str:
    """The round number of heatmap column ``position``; columns between ticks get no label."""
    index = int(round(position))
    return str(rounds[index]) if 0 <= index < len(rounds) and abs(position - index) < 1e-6 else ""


def _edge_labels(num_edges: int) -> list[str] | None:
    """``node←input`` names in DARTS' alpha row order when the edge count is a DARTS cell's, else None."""
    steps = 1
    while len(edge_index(steps)) < num_edges:
        steps += 1
    if len(edge_index(steps)) != num_edges:
        return None
    input_names = ("k-2", "k-1")
    return [f"{node}←{input_names[source] if source < 2 else source - 2}" for node, source in edge_index(steps)]
