"""Compare the runs of one MLflow experiment: a markdown table and a grid of their normal cells.

Reads only what runs already log (tags, final metrics, the ``genotype.json`` artifact), so any
finished or interrupted run can be compared without re-running anything.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from federated_nas.errors import DataError
from federated_nas.search_space.genotypes import Genotype
from federated_nas.tracking.cell_drawing import cell_graph, draw_cell_on_axes, drawing_limits
from federated_nas.tracking.plots import save_figure

import matplotlib.pyplot as plt  # noqa: E402  (after plots.py has chosen the headless backend)

GENOTYPE_ARTIFACT = "genotype.json"
MISSING = "-"
GRID_DPI = 160  # thumbnails carry small op labels
THUMB_WIDTH = 4.6  # inches per cell drawing in the grid
TABLE_COLUMNS = ("run", "id", "algorithm", "dataset", "partition", "clients", "seed", "global acc (%)",
                 "client acc (%)", "params", "search time")


@dataclass(frozen=True)
class RunRow:
    """What the comparison shows of one run; metrics are the run's last logged values."""

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
    client = open_store(tracking_uri)
    experiment_id = find_experiment(client, experiment, tracking_uri)
    filter_string = (filter_string or "").strip()
    rows = [run_row(client, run) for run in search_all_runs(client, experiment_id, filter_string)]
    return sort_rows(rows)


def open_store(tracking_uri: str) -> MlflowClient:
    """A client on an existing store; a missing SQLite file is an error, not a new empty store."""
    sqlite_prefix = "sqlite:///"
    if tracking_uri.startswith(sqlite_prefix):
        database = tracking_uri[len(sqlite_prefix):]
        if database and database != ":memory:" and not Path(database).is_file():
            raise DataError(f"no MLflow store at {database} (tracking URI {tracking_uri}); has a run logged there?")
    try:
        return MlflowClient(tracking_uri)
    except MlflowException as err:
        raise DataError(f"cannot open MLflow tracking URI {tracking_uri}: {_first_line(err)}") from None


def find_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        known = sorted(e.name for e in client.search_experiments())
        raise DataError(f"no MLflow experiment named {name!r} in {tracking_uri}; known experiments: "
                        f"{', '.join(known) if known else 'none'}")
    return experiment.experiment_id


def search_all_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """All pages of ``search_runs``: an experiment can hold more runs than one page."""
    runs: list[Run] = []
    page_token = None
    while True:
        try:
            page = client.search_runs([experiment_id], filter_string=filter_string, page_token=page_token)
        except MlflowException as err:
            raise DataError(f"MLflow rejected the filter {filter_string!r}: {_first_line(err)}") from None
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def run_row(client: MlflowClient, run: Run) -> RunRow:
    tags, metrics = run.data.tags, run.data.metrics
    name = run.info.run_name or tags.get("mlflow.runName") or run.info.run_id[:8]
    return RunRow(
        name=name,
        run_id=run.info.run_id,
        algorithm=tags.get("algorithm", MISSING),
        dataset=tags.get("dataset", MISSING),
        partition=partition_text(tags),
        num_clients=tags.get("num_clients", MISSING),
        seed=tags.get("seed", MISSING),
        global_test_acc=metrics.get("global_test_acc"),
        client_test_acc_mean=metrics.get("client_test_acc_mean"),
        client_test_acc_std=metrics.get("client_test_acc_std"),
        params=metrics.get("derived_params", metrics.get("params")),
        elapsed_seconds=metrics.get("elapsed_seconds"),
        genotype=download_genotype(client, run.info.run_id, name),
    )


def partition_text(tags: dict[str, str]) -> str:
    """``dirichlet(alpha=0.5, min_client_size=10)`` from the ``partition`` and ``partition.*`` tags."""
    prefix = "partition."
    settings = sorted((key[len(prefix):], value) for key, value in tags.items() if key.startswith(prefix))
    name = tags.get("partition", MISSING if not settings else "partition")
    if not settings:
        return name
    return f"{name}({', '.join(f'{key}={value}' for key, value in settings)})"


def download_genotype(client: MlflowClient, run_id: str, run_name: str) -> Genotype | None:
    """The run's ``genotype.json`` artifact, or None for runs that have none (fixed architectures)."""
    try:
        if GENOTYPE_ARTIFACT not in {info.path for info in client.list_artifacts(run_id)}:
            return None
        with tempfile.TemporaryDirectory() as directory:
            genotype = Genotype.load(client.download_artifacts(run_id, GENOTYPE_ARTIFACT, directory))
        for edges, concat in ((genotype.normal, genotype.normal_concat), (genotype.reduce, genotype.reduce_concat)):
            cell_graph(edges, concat)
    except (MlflowException, DataError) as err:
        raise DataError(f"run {run_name} ({run_id[:8]}): bad {GENOTYPE_ARTIFACT}: {_first_line(err)}") from None
    return genotype


def sort_rows(rows: list[RunRow]) -> list[RunRow]:
    """Best global accuracy first; runs that never evaluated go last, by name."""
    return sorted(rows, key=lambda row: (row.global_test_acc is None, -(row.global_test_acc or 0.0), row.name))


def write_table(rows: list[RunRow], path: str | Path, heading: str = "# Run comparison") -> Path:
    """A markdown table, one line per run, best global accuracy first."""
    path = Path(path)
    lines = [heading, ""]
    rows = sort_rows(rows)
    if rows:
        lines.append("| " + " | ".join(TABLE_COLUMNS) + " |")
        lines.append("|" + "|".join("---" for _ in TABLE_COLUMNS) + "|")
        lines.extend("| " + " | ".join(_escape(cell) for cell in _table_cells(row)) + " |" for row in rows)
    else:
        lines.append("No runs matched.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_cell_grid(rows: list[RunRow], path: str | Path) -> Path:
    """One image with a small normal-cell drawing per run that has a genotype, in table order."""
    pictured = [row for row in sort_rows(rows) if row.genotype is not None]
    if not pictured:
        fig, ax = plt.subplots(figsize=(5.0, 1.5))
        try:
            ax.text(0.5, 0.5, "No run here has a genotype.json\n(fixed-architecture runs have none)",
                    ha="center", va="center", fontsize=10)
            ax.axis("off")
            return save_figure(fig, path)
        finally:
            plt.close(fig)
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
        for ax in list(axes.flat)[len(pictured):]:
            ax.axis("off")
        fig.suptitle("Normal cells, best global accuracy first", fontsize=10)
        fig.tight_layout()
        return save_figure(fig, path, dpi=GRID_DPI)
    finally:
        plt.close(fig)


def compare_runs(tracking_uri: str, experiment: str, out: str | Path,
                 filter_string: str | None = None) -> tuple[Path, Path]:
    """``<out>/comparison.md`` and ``<out>/comparison.png`` for the matching runs of ``experiment``."""
    out = Path(out)
    rows = collect_rows(tracking_uri, experiment, filter_string)
    filter_note = f"filter `{filter_string.strip()}`" if filter_string and filter_string.strip() else "no filter"
    heading = (f"# Runs of MLflow experiment `{experiment}`\n\n"
               f"{len(rows)} run{'' if len(rows) == 1 else 's'}, {filter_note}, store `{tracking_uri}`; sorted by global test accuracy.")
    return write_table(rows, out / "comparison.md", heading), write_cell_grid(rows, out / "comparison.png")


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


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
