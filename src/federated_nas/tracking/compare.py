"""Compare the runs of one MLflow experiment: a markdown table and a grid of their normal cells,
or (``compare_personalization``) a table of global and local accuracy, size, time and traffic with
a grid of the per-client local accuracy histograms.

Reads only what runs already log (tags, metrics under their sectioned MLflow names, the
``genotype.json`` and ``personalized/client_accuracy.json`` artifacts, fetched by ``run_store``),
so any finished or interrupted run can be compared without re-running anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from federated_nas.search_space.genotypes import Genotype
from federated_nas.tracking.cell_drawing import cell_graph, draw_cell_on_axes, drawing_limits
from federated_nas.tracking.plots import save_figure
from federated_nas.tracking.run_record import PERSONALIZATION_TAG, final_name, metric_name
from federated_nas.tracking.run_store import (CLIENT_ACCURACY_ARTIFACT, bytes_communicated, download_client_accuracy,
                                              download_genotype, matching_runs)

import matplotlib.pyplot as plt  # noqa: E402  (after plots.py has chosen the headless backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

MISSING = "-"
GRID_DPI = 160  # thumbnails carry small op labels
THUMB_WIDTH = 4.6  # inches per cell drawing in the grid
TABLE_COLUMNS = ("run", "id", "algorithm", "dataset", "partition", "clients", "seed", "global acc (%)",
                 "client acc (%)", "params", "search time")
# the metrics read back, by their MLflow names
FINAL_ACC, CURVE_ACC = final_name("global_test_acc"), metric_name("global_test_acc")
CLIENT_ACC = metric_name("client_test_acc_mean"), metric_name("client_test_acc_std")
PERSONAL_ACC = metric_name("personalized_acc_after_mean"), metric_name("personalized_acc_after_std")
FINAL_PARAMS, ELAPSED = metric_name("final_model_params"), metric_name("elapsed_seconds")
FINAL_MODEL_TAG = "final_model"  # which size final_model_params repeats (runs.run_tags)
# what the final model is: FedMetaNAS keeps its pruned supernet (no retraining), FedNAS would train its
# derived network, FedDSNAS and FedRLNAS keep their argmax child, the fixed-network methods train `params`
PARAMS_KIND = {"supernet_params": "supernet", "derived_params": "derived", "child_params": "child",
               "params": "network"}
PERSONAL_COLUMNS = ("algorithm", "data setting", "seed", "global acc (%)", "local acc (%)", "personalization",
                    "params", "wall time", "communicated", "run")
PERSONAL_NOTE = ("Global acc: the final model on the whole test set (`test/final_acc`). "
                 "Local acc: mean ± std over clients of the local test accuracy after personalization "
                 "(`clients/personalized_acc_after_*`); marked *global model* where a run did not personalize "
                 "(`clients/test_acc_*`). Personalization: what it cost each client (the run's `personalization` "
                 "tag): steps on its own data after the rounds, or a personal part trained in the rounds it took "
                 "part in; budgets differ between methods, so compare rows with this column in view. Params: the "
                 "final model's (`arch/final_model_params`): *network* = the fixed network, *derived* = the network "
                 "derived from the searched cell, *child* = the argmax "
                 "child, *supernet* = FedMetaNAS' pruned supernet. Wall time: the federated rounds "
                 "(`time/elapsed_seconds`). Communicated: bytes sent plus received by the server "
                 "(`comm/bytes_*`), summed over rounds.")
HISTOGRAM_BINS = np.linspace(0.0, 1.0, 21)


@dataclass(frozen=True)
class RunRow:
    """What the comparison shows of one run; metrics are the run's last logged values.

    ``global_test_acc`` is the final whole-test-set accuracy, or the curve's last point for a run
    that did not finish.
    """

    name: str
    run_id: str
    algorithm: str
    dataset: str
    partition: str
    num_clients: str
    seed: str
    global_test_acc: float | None
    client_test_acc_mean: float | None
    client_test_acc_std: float | None
    params: float | None
    elapsed_seconds: float | None
    genotype: Genotype | None

    @property
    def short_id(self) -> str:
        return self.run_id[:8]


def collect_rows(tracking_uri: str, experiment: str, filter_string: str | None = None) -> list[RunRow]:
    """Every active run of ``experiment`` matching the MLflow ``filter_string``, best global accuracy first."""
    client, runs = matching_runs(tracking_uri, experiment, filter_string)
    return sort_rows([run_row(client, run) for run in runs])


def run_row(client: MlflowClient, run: Run) -> RunRow:
    tags, metrics = run.data.tags, run.data.metrics
    name = display_name(run)
    return RunRow(
        name=name,
        run_id=run.info.run_id,
        algorithm=tags.get("algorithm", MISSING),
        dataset=tags.get("dataset", MISSING),
        partition=partition_text(tags),
        num_clients=tags.get("num_clients", MISSING),
        seed=tags.get("seed", MISSING),
        global_test_acc=global_accuracy(metrics),
        client_test_acc_mean=metrics.get(CLIENT_ACC[0]),
        client_test_acc_std=metrics.get(CLIENT_ACC[1]),
        params=metrics.get(FINAL_PARAMS),
        elapsed_seconds=metrics.get(ELAPSED),
        genotype=download_genotype(client, run.info.run_id, name),
    )


def global_accuracy(metrics: dict[str, float]) -> float | None:
    return metrics.get(FINAL_ACC, metrics.get(CURVE_ACC))


def display_name(run: Run) -> str:
    return run.info.run_name or run.data.tags.get("mlflow.runName") or run.info.run_id[:8]


def partition_text(tags: dict[str, str]) -> str:
    """``dirichlet(alpha=0.5, min_client_size=10)`` from the ``partition`` and ``partition.*`` tags."""
    prefix = "partition."
    settings = sorted((key[len(prefix):], value) for key, value in tags.items() if key.startswith(prefix))
    name = tags.get("partition", MISSING if not settings else "partition")
    if not settings:
        return name
    return f"{name}({', '.join(f'{key}={value}' for key, value in settings)})"


def sort_rows(rows: list[RunRow]) -> list[RunRow]:
    """Best global accuracy first; runs that never evaluated go last, by name."""
    return sorted(rows, key=lambda row: (row.global_test_acc is None, -(row.global_test_acc or 0.0), row.name))


def write_table(rows: list[RunRow], path: str | Path, heading: str = "# Run comparison") -> Path:
    """A markdown table, one line per run, best global accuracy first."""
    return _write_markdown(path, heading, TABLE_COLUMNS, [_table_cells(row) for row in sort_rows(rows)])


def write_cell_grid(rows: list[RunRow], path: str | Path) -> Path:
    """One image with a small normal-cell drawing per run that has a genotype, in table order."""
    pictured = [row for row in sort_rows(rows) if row.genotype is not None]
    if not pictured:
        return _note_image("No run here has a genotype.json\n(fixed-architecture runs have none)", path)
    columns = min(3, len(pictured))
    grid_rows = math.ceil(len(pictured) / columns)
    steps = max(cell_graph(row.genotype.normal, row.genotype.normal_concat).steps for row in pictured)
    x_min, x_max, y_min, y_max = drawing_limits(steps)
    thumb_height = THUMB_WIDTH * (y_max - y_min) / (x_max - x_min) + 0.5  # the drawing plus its two title lines
    fig, axes = plt.subplots(grid_rows, columns, squeeze=False,
                             figsize=(THUMB_WIDTH * columns, thumb_height * grid_rows + 0.4))
    try:
        for ax, row in zip(axes.flat, pictured):
            title = f"{row.name}\n{row.algorithm} · global acc {_percent(row.global_test_acc)}"
            draw_cell_on_axes(ax, row.genotype.normal, row.genotype.normal_concat, title, compact=True)
        return _save_grid(fig, axes, len(pictured), "Normal cells, best global accuracy first", path)
    finally:
        plt.close(fig)


def compare_runs(tracking_uri: str, experiment: str, out: str | Path,
                 filter_string: str | None = None) -> tuple[Path, Path]:
    """``<out>/comparison.md`` and ``<out>/comparison.png`` for the matching runs of ``experiment``."""
    out = Path(out)
    rows = collect_rows(tracking_uri, experiment, filter_string)
    heading = (f"# Runs of MLflow experiment `{experiment}`\n\n"
               f"{_selection_note(rows, filter_string, tracking_uri)}; sorted by global test accuracy.")
    return write_table(rows, out / "comparison.md", heading), write_cell_grid(rows, out / "comparison.png")


# --- personalization: global vs local accuracy, cost, and the clients' spread --------------------

@dataclass(frozen=True)
class PersonalRow:
    """One run in the personalization comparison.

    ``local_acc_*`` are the personalized accuracies when the run personalized, else the global
    model's accuracy on the clients' local test splits (``personalized`` says which).
    """

    name: str
    run_id: str
    algorithm: str
    setting: str
    seed: str
    global_test_acc: float | None
    local_acc_mean: float | None
    local_acc_std: float | None
    personalized: bool
    budget: str | None  # the personalization's cost, from the run's tag
    params: float | None
    params_metric: str | None
    elapsed_seconds: float | None
    bytes_communicated: float | None
    client_accuracy: dict[str, list[float]] | None

    @property
    def short_id(self) -> str:
        return self.run_id[:8]


def collect_personal_rows(tracking_uri: str, experiment: str, filter_string: str | None = None) -> list[PersonalRow]:
    """Every active run of ``experiment`` matching ``filter_string``, by data setting then local accuracy."""
    client, runs = matching_runs(tracking_uri, experiment, filter_string)
    return sort_personal_rows([personal_row(client, run) for run in runs])


def personal_row(client: MlflowClient, run: Run) -> PersonalRow:
    tags, metrics = run.data.tags, run.data.metrics
    name = display_name(run)
    algorithm = tags.get("algorithm", MISSING)
    personalized = PERSONAL_ACC[0] in metrics
    mean_key, std_key = PERSONAL_ACC if personalized else CLIENT_ACC
    params_metric = tags.get(FINAL_MODEL_TAG) if FINAL_PARAMS in metrics else None
    return PersonalRow(
        name=name,
        run_id=run.info.run_id,
        algorithm=algorithm,
        setting=f"{tags.get('dataset', MISSING)}, {partition_text(tags)}",
        seed=tags.get("seed", MISSING),
        global_test_acc=global_accuracy(metrics),
        local_acc_mean=metrics.get(mean_key),
        local_acc_std=metrics.get(std_key),
        personalized=personalized,
        budget=tags.get(PERSONALIZATION_TAG) if personalized else None,
        params=metrics.get(FINAL_PARAMS),
        params_metric=params_metric,
        elapsed_seconds=metrics.get(ELAPSED),
        bytes_communicated=bytes_communicated(client, run.info.run_id),
        client_accuracy=download_client_accuracy(client, run.info.run_id, name),
    )


def sort_personal_rows(rows: list[PersonalRow]) -> list[PersonalRow]:
    """Grouped by data setting; within one, best local accuracy first, runs without one last."""
    return sorted(rows, key=lambda row: (row.setting, row.local_acc_mean is None, -(row.local_acc_mean or 0.0),
                                         row.algorithm, row.seed, row.name))


def write_personal_table(rows: list[PersonalRow], path: str | Path, heading: str = "# Personalization") -> Path:
    """A markdown table, one line per run, with a note on where local accuracy and size come from."""
    return _write_markdown(path, heading, PERSONAL_COLUMNS, [_personal_cells(row) for row in sort_personal_rows(rows)],
                           PERSONAL_NOTE)


def write_client_histograms(rows: list[PersonalRow], path: str | Path) -> Path:
    """One panel per personalized run, in table order: how its clients' local accuracies spread
    after personalization (bars) and before it (outline), as in the FedNAS paper's Figure 5."""
    pictured = [row for row in sort_personal_rows(rows) if row.client_accuracy is not None]
    if not pictured:
        return _note_image(f"No run here has {CLIENT_ACCURACY_ARTIFACT}\n(runs with personalize=true write it)", path)
    columns = min(4, len(pictured))
    grid_rows = math.ceil(len(pictured) / columns)
    fig, axes = plt.subplots(grid_rows, columns, squeeze=False, figsize=(4.0 * columns, 2.7 * grid_rows + 0.5))
    try:
        for ax, row in zip(axes.flat, pictured):
            after, before = row.client_accuracy["after"], row.client_accuracy["before"]
            ax.hist(after, bins=HISTOGRAM_BINS, color="#60a5fa", edgecolor="#1e3a8a", label="after")
            ax.hist(before, bins=HISTOGRAM_BINS, histtype="step", color="#6b7280", linestyle="--", label="before")
            ax.axvline(float(np.mean(after)), color="#dc2626", linewidth=1.2)
            ax.set_title(f"{row.algorithm} · seed {row.seed}\n{row.setting}", fontsize=8)
            ax.set_xlim(0.0, 1.0)
            ax.set_xlabel("local test accuracy", fontsize=8)
            ax.set_ylabel("clients", fontsize=8)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
        axes.flat[0].legend(fontsize=7, loc="upper left")
        return _save_grid(fig, axes, len(pictured), "Local test accuracy per client after personalization (red: mean)",
                          path)
    finally:
        plt.close(fig)


def compare_personalization(tracking_uri: str, experiment: str, out: str | Path,
                            filter_string: str | None = None) -> tuple[Path, Path]:
    """``<out>/personalization.md`` and ``<out>/personalization.png`` for the matching runs of ``experiment``."""
    out = Path(out)
    rows = collect_personal_rows(tracking_uri, experiment, filter_string)
    heading = (f"# Personalization in MLflow experiment `{experiment}`\n\n"
               f"{_selection_note(rows, filter_string, tracking_uri)}; grouped by data setting, "
               "best local accuracy first.")
    return (write_personal_table(rows, out / "personalization.md", heading),
            write_client_histograms(rows, out / "personalization.png"))


def _personal_cells(row: PersonalRow) -> list[str]:
    local = _percent(row.local_acc_mean, sign=False)
    if row.local_acc_mean is not None and row.local_acc_std is not None:
        local += f" ± {100 * row.local_acc_std:.1f}"
    if row.local_acc_mean is not None and not row.personalized:
        local += " (global model)"
    params = _count(row.params)
    if row.params_metric in PARAMS_KIND:
        params += f" ({PARAMS_KIND[row.params_metric]})"
    return [row.algorithm, row.setting, row.seed, _percent(row.global_test_acc, sign=False), local,
            row.budget or MISSING, params,
            _duration(row.elapsed_seconds), _bytes(row.bytes_communicated), f"{row.name} ({row.short_id})"]


def _bytes(value: float | None) -> str:
    if value is None:
        return MISSING
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{int(value)} B"


def _write_markdown(path: str | Path, heading: str, columns: tuple[str, ...], cells: list[list[str]],
                    note: str = "") -> Path:
    """``heading``, then a table of ``cells`` (one list per run) and ``note``, or "No runs matched."."""
    path = Path(path)
    lines = [heading, ""]
    if cells:
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "|".join("---" for _ in columns) + "|")
        lines.extend("| " + " | ".join(_escape(cell) for cell in row) + " |" for row in cells)
        if note:
            lines += ["", note]
    else:
        lines.append("No runs matched.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _selection_note(rows: list, filter_string: str | None, tracking_uri: str) -> str:
    filter_note = f"filter `{filter_string.strip()}`" if filter_string and filter_string.strip() else "no filter"
    return f"{len(rows)} run{'' if len(rows) == 1 else 's'}, {filter_note}, store `{tracking_uri}`"


def _save_grid(fig, axes, used: int, title: str, path: str | Path) -> Path:
    """Blank the grid's unused panels, title it and write it: the end of every per-run grid image."""
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=GRID_DPI)


def _note_image(text: str, path: str | Path) -> Path:
    """A small image saying why there is nothing to draw, so the output set is always complete."""
    fig, ax = plt.subplots(figsize=(5.0, 1.5))
    try:
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10)
        ax.axis("off")
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def _table_cells(row: RunRow) -> list[str]:
    client_acc = _percent(row.client_test_acc_mean, sign=False)
    if row.client_test_acc_mean is not None and row.client_test_acc_std is not None:
        client_acc += f" ± {100 * row.client_test_acc_std:.1f}"
    return [row.name, row.short_id, row.algorithm, row.dataset, row.partition, row.num_clients, row.seed,
            _percent(row.global_test_acc, sign=False), client_acc, _count(row.params), _duration(row.elapsed_seconds)]


def _percent(fraction: float | None, sign: bool = True) -> str:
    if fraction is None:
        return MISSING
    return f"{100 * fraction:.1f}{'%' if sign else ''}"


def _count(value: float | None) -> str:
    if value is None:
        return MISSING
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e3:.1f}k" if value >= 1e3 else str(int(value))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _escape(cell: str) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")
