"""Run-level tracking through Lightning's ``MLFlowLogger``: params, tags, per-round metrics, images, artifacts.

Round metrics are logged by the server loop with ``step=round``; client Trainers log nothing
(MLflow params are immutable, and per-client loggers would collide on them).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from federated_nas.errors import ConfigError
from federated_nas.tracking.run_record import mlflow_metrics, researcher_params

if TYPE_CHECKING:  # MLflow itself is imported where a run is tracked: logger=none runs start a second sooner
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from mlflow.tracking import MlflowClient

CONNECT_TIMEOUT_SECONDS = 5.0
DESCRIPTION_TAG = "mlflow.note.content"  # what the UI shows as the run's description
PARENT_TAG = "mlflow.parentRunId"  # the UI nests a run under this one
SWEEP_TAG = "sweep_dir"  # a sweep's parent run, found by its Hydra sweep dir
SYSTEM_METRICS_SECONDS = 10  # CPU, memory (and GPU where pynvml is) sampled this often: the run's system/ charts
FINAL_MODEL = "final_model"  # the logged model's name: what the method ships, loaded by mlflow.pytorch.load_model
LINKED_METRICS = ("test/final_acc", "arch/final_model_params")  # shown beside the model in the UI's Models tab


def stop_system_metrics(monitor: "SystemMetricsMonitor") -> None:
    """Stop MLflow's monitor so that every tracked run keeps at least one system/ sample: the monitor publishes
    only after a whole interval and gives up on a failed status read (sqlite busy under load), so a short or
    crowded run would otherwise have no system/ charts. A sample that cannot be written is a warning."""
    monitor.finish()
    if getattr(monitor, "_logging_step", 1) == 0:  # nothing was published while the run ran
        try:
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as err:  # noqa: BLE001 -- the run's result must not depend on its system charts
            logging.getLogger(__name__).warning("system metrics: the final sample was not logged (%s)", err)


def sqlite_file(uri: str) -> Path:
    """The database file of a ``sqlite:///<path>`` tracking URI."""
    return Path(str(uri).removeprefix("sqlite:///"))


def check_tracking_uri(uri: str | None, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Fail in seconds when the tracking store cannot be reached or created.

    MLflow's own client retries an unreachable server for minutes, and a local store whose
    directory cannot be created only fails at the first write; both are checked up front.
    """
    if not uri:
        return
    parsed = urlparse(str(uri))
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        except OSError as err:
            raise ConfigError(f"logger.tracking_uri={uri}: MLflow tracking server unreachable ({err}); start it, "
                              "or drop the override to use the local store under logs/") from None
        return
    if parsed.scheme == "sqlite":
        local = sqlite_file(uri).parent
    elif parsed.scheme in ("file", ""):
        local = Path(parsed.path)
    else:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        schemes = sorted(scheme for scheme in _tracking_store_registry._registry if scheme)
        if parsed.scheme not in schemes:
            raise ConfigError(f"logger.tracking_uri={uri}: MLflow has no tracking store for {parsed.scheme!r}:// "
                              f"(it knows {', '.join(schemes)})")
        return  # a database or a hosted store: MLflow checks the rest when it connects
    try:
        local.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"logger.tracking_uri={uri}: cannot create the local store ({err})") from None


@contextlib.contextmanager
def store_lock(uri: str | None):
    """Hold an exclusive lock beside a local SQLite store while it is created or migrated.

    Sweep jobs that start together would each create the schema: one then fails inside MLflow's
    migrations (``duplicate column name: step``). Under the lock the first job creates the store and
    its experiment, and the others find them. Wrap both the logger's construction (which opens the
    store) and its first ``experiment`` access (which creates the experiment and run). Other stores
    need no lock.
    """
    if not uri or urlparse(str(uri)).scheme != "sqlite":
        yield
        return
    database = sqlite_file(uri)
    lock_path = database.with_name(database.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def quiet_mlflow() -> None:
    """MLflow's own INFO lines (store tables created, system metrics monitor started and stopped) say nothing a
    user can act on; its warnings still show. After MLflow's import, which sets its logger's level."""
    import mlflow  # noqa: F401

    logging.getLogger("mlflow").setLevel(logging.WARNING)


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.ERROR):
    """Only records of ``level`` and above from logger ``name`` inside the block."""
    target = logging.getLogger(name)
    before = target.level
    target.setLevel(level)
    try:
        yield
    finally:
        target.setLevel(before)


def ensure_experiment(logger: MLFlowLogger) -> None:
    """Create the logger's experiment where it is missing, as Lightning would, but silently: Lightning warns
    "Experiment with name ... not found. Creating it." (twice, through two handlers) on every new store."""
    from mlflow.tracking import MlflowClient

    from mlflow.exceptions import MlflowException

    client = MlflowClient(getattr(logger, "_tracking_uri", None))
    name = logger._experiment_name
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name, artifact_location=getattr(logger, "_artifact_location", None))
        except MlflowException:  # another job of a sweep created it in between (a store without store_lock)
            if client.get_experiment_by_name(name) is None:
                raise


class RunTracker:
    """Thin layer over an MLFlowLogger; with ``logger=None`` (``logger=none``) it records nothing.

    Steps are round numbers counted from 1, as in the log lines. Metric names are translated to
    their sectioned MLflow names here (``run_record.mlflow_metrics``), nowhere else.
    """

    def __init__(self, logger: MLFlowLogger | None):
        self.logger = logger
        self.system_metrics: SystemMetricsMonitor | None = None
        self._marked_tables: set[str] = set()  # tables already marked as such in the run's tags
        if logger is not None:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            ensure_experiment(logger)
            logger.experiment  # noqa: B018 -- creates the run now, so a bad tracking URI fails before any work
            self.system_metrics = SystemMetricsMonitor(self.run_id, SYSTEM_METRICS_SECONDS,
                                                       tracking_uri=getattr(logger, "_tracking_uri", None))
            self.system_metrics.start()

    @property
    def client(self) -> MlflowClient:
        return self.logger.experiment

    @property
    def run_id(self) -> str | None:
        return self.logger.run_id if self.logger is not None else None

    @property
    def artifact_uri(self) -> str | None:
        return self.client.get_run(self.run_id).info.artifact_uri if self.logger is not None else None

    def log_config(self, cfg: DictConfig) -> None:
        if self.logger is not None:
            self.logger.log_hyperparams(researcher_params(OmegaConf.to_container(cfg, resolve=True)))

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.logger is None:
            return
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def describe(self, text: str) -> None:
        """The run's description, shown at the top of its page in the UI (markdown)."""
        self.set_tags({DESCRIPTION_TAG: text})

    def log_metrics(self, metrics: dict[str, Any], step: int, final_round: bool = False) -> None:
        """Numeric entries of ``metrics`` (plain keys) under their MLflow names, at round ``step``."""
        named = mlflow_metrics(metrics, final_round)
        if self.logger is not None and named:
            self.logger.log_metrics(named, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.logger is not None:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_image(self, path: str | Path, key: str, step: int) -> None:
        """An image under ``key`` at round ``step``: the UI shows it with a step slider, run beside run."""
        if self.logger is None:
            return
        with Image.open(path) as image:
            self.client.log_image(self.run_id, image.convert("RGB"), key=key, step=step)

    def join_sweep(self, sweep_dir: str) -> str | None:
        """Nest this run under its sweep's parent run, made by the sweep's first job: the runs table then
        folds a sweep into one row. Call under ``store_lock``, so concurrent jobs find one parent.
        Returns the parent's run id."""
        if self.logger is None:
            return None
        experiment_id = self.logger.experiment_id
        found = self.client.search_runs([experiment_id], f"tags.{SWEEP_TAG} = '{sweep_dir}'", max_results=1)
        if found:
            parent_id = found[0].info.run_id
        else:
            parent = self.client.create_run(experiment_id, run_name=f"sweep-{Path(sweep_dir).name}",
                                            tags={SWEEP_TAG: sweep_dir})
            parent_id = parent.info.run_id
            self.client.set_terminated(parent_id)  # a folder for the jobs, not work that runs
        self.set_tags({PARENT_TAG: parent_id})
        return parent_id

    def log_data_setting(self, name: str, partition_file: Path, split_sizes: dict[str, list[int]]) -> None:
        """The run's federated data as an MLflow dataset input: the runs table's *Dataset* column.

        Named ``<dataset>-<partition label>``; its digest is the partition file's, so runs on the very
        same split share it (and differ when seed, clients or split differ). Its profile, shown when the
        dataset is opened in the UI, holds every client's train, val and test split size.
        """
        if self.logger is None:
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        digest = hashlib.sha256(Path(partition_file).read_bytes()).hexdigest()[:12]
        profile = {"clients": len(split_sizes["train"]),
                   **{f"{role}_sizes": sizes for role, sizes in split_sizes.items()}}
        dataset = Dataset(name=name, digest=digest, source_type="local", source=str(partition_file),
                          profile=json.dumps(profile))
        self.client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, "train")])])

    def log_table_rows(self, rows: dict[str, list[Any]], local_table: Path) -> None:
        """Append ``rows`` (column -> values; the first column keys a row) to the table kept at ``local_table``
        (``.json``, MLflow's table format: pandas' split orient) and upload it under its file name.

        The run dir's copy is the table: MLflow's own ``log_table`` downloads the stored table to append to
        it, a round-trip per round to a remote store (and a progress bar in the log), and a resumed run
        would have to do the same. The table is marked as one for the UI once per tracker."""
        local_table = Path(local_table)
        table = json.loads(local_table.read_text()) if local_table.is_file() else {"columns": list(rows), "data": []}
        new = [list(row) for row in zip(*(rows[column] for column in table["columns"]))]
        keys = {row[0] for row in new}  # the first column keys a row: a round run again replaces its row
        table["data"] = [row for row in table["data"] if row[0] not in keys] + new
        local_table.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_table.with_name(local_table.name + ".tmp")
        tmp.write_text(json.dumps(table))
        tmp.replace(local_table)  # a crash never leaves half a table
        if self.logger is None:
            return
        self.client.log_artifact(self.run_id, str(local_table))
        if local_table.name not in self._marked_tables:
            from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

            marked = json.loads(self.client.get_run(self.run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
            entry = {"path": local_table.name, "type": "table"}
            if entry not in marked:
                self.client.set_tag(self.run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*marked, entry]))
            self._marked_tables.add(local_table.name)

    def log_final_model(self, model: torch.nn.Module, final: dict[str, Any], step: int) -> str | None:
        """The model the method ships, as an MLflow logged model of this run (``mlflow.pytorch`` format,
        loaded with ``mlflow.pytorch.load_model("models:/<id>")``), its final accuracy and size linked to it.
        Returns the model id."""
        if self.logger is None:
            return None
        import mlflow.pytorch  # deferred: it imports the pytorch_lightning package, seconds not every run needs

        logged = self.client.create_logged_model(self.logger.experiment_id, name=FINAL_MODEL,
                                                 source_run_id=self.run_id)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / FINAL_MODEL
            # pickled, not MLflow 3's default traced pt2 graph: a supernet's forward branches on its
            # relaxation and masks, which a trace would freeze; loading needs federated_nas installed
            # a choice made here, not the user's: MLflow's warning that pickles run code on loading is not shown
            with quiet_logger("mlflow.pytorch"):
                mlflow.pytorch.save_model(copy.deepcopy(model).cpu().eval(), local, serialization_format="pickle",
                                          pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                                            "federated-nas"])
            self.client.log_model_artifacts(logged.model_id, str(local))
        self.client.finalize_logged_model(logged.model_id, "READY")
        for key, value in mlflow_metrics(final, final_round=True).items():
            if key in LINKED_METRICS:
                self.client.log_metric(self.run_id, key, value, step=step, model_id=logged.model_id)
        return logged.model_id

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run with ``status``. A failed or stopped run is closed on the way out of its error: where
        the store cannot take the status (its disk is full), one warning, and the run's own error is the one
        reported."""
        if self.system_metrics is not None:
            stop_system_metrics(self.system_metrics)
            self.system_metrics = None
        if self.logger is None:
            return
        lightning_status = {"FINISHED": "success", "FAILED": "failed"}.get(status, status)  # KILLED as is
        if status == "FINISHED":
            self.logger.finalize(lightning_status)
            return
        try:
            with quiet_logger("mlflow", logging.CRITICAL):  # its own ERROR line and traceback of the same failure
                self.logger.finalize(lightning_status)
        except Exception as err:
            logging.getLogger(__name__).warning("could not mark the MLflow run %s: %s", status,
                                                str(err).strip().splitlines()[0] if str(err).strip() else err)


class OpeningTracker:
    """A ``RunTracker`` still being opened on a background thread, standing in for it meanwhile.

    Opening MLflow (its import, the store, the run) and recording the run's start (config, partition
    files, heatmap) take seconds that the first round does not need: the round starts at once and
    the first use of the tracker, at the round's end, waits for it. An error in opening is raised
    there, as raised on the thread.
    """

    def __init__(self, open_tracker: Callable[[], RunTracker]):
        pool = ThreadPoolExecutor(1, thread_name_prefix="tracker-open")
        self._opened = pool.submit(open_tracker)
        pool.shutdown(wait=False)  # its one thread ends with the task; nothing waits for it here

    def result(self) -> RunTracker:
        """The opened tracker (waits until it is)."""
        return self._opened.result()

    def __getattr__(self, name: str) -> Any:  # only names this class does not define: the tracker's
        return getattr(self.result(), name)

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run; a failed run whose tracker never opened has nothing to close (its own error is raised)."""
        if status != "FINISHED" and self._opened.exception() is not None:
            return
        self.result().finish(status)
