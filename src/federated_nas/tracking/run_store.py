"""Reading an MLflow store for the comparisons: the store, an experiment's runs, and the artifacts and metric
histories the reports need, each failure as one ``DataError`` line naming the run."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from federated_nas.errors import DataError
from federated_nas.search_space.genotypes import Genotype
from federated_nas.tracking.cell_drawing import cell_graph
from federated_nas.tracking.run_record import metric_name

GENOTYPE_ARTIFACT = "genotype.json"
CLIENT_ACCURACY_ARTIFACT = "personalized/client_accuracy.json"  # written by federation/personalization.py
TRAFFIC_METRICS = tuple(metric_name(key) for key in ("bytes_sent", "bytes_received"))  # per round, both ways


def matching_runs(tracking_uri: str, experiment: str, filter_string: str | None) -> tuple[MlflowClient, list[Run]]:
    """(a client on the store, every active run of ``experiment`` matching ``filter_string``)."""
    client = open_store(tracking_uri)
    experiment_id = find_experiment(client, experiment, tracking_uri)
    return client, search_all_runs(client, experiment_id, (filter_string or "").strip())


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
        raise DataError(f"cannot open MLflow tracking URI {tracking_uri}: {first_line(err)}") from None


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
            raise DataError(f"MLflow rejected the filter {filter_string!r}: {first_line(err)}") from None
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def download_genotype(client: MlflowClient, run_id: str, run_name: str) -> Genotype | None:
    """The run's ``genotype.json`` artifact, or None for runs that have none (fixed architectures) or
    whose architecture is not a DARTS cell (the MLP space's ``{"layers": [...]}``: no cell to draw)."""
    try:
        if GENOTYPE_ARTIFACT not in {info.path for info in client.list_artifacts(run_id)}:
            return None
        with tempfile.TemporaryDirectory() as directory:
            path = client.download_artifacts(run_id, GENOTYPE_ARTIFACT, directory)
            if "layers" in json_object(path):
                return None
            genotype = Genotype.load(path)
        for edges, concat in ((genotype.normal, genotype.normal_concat), (genotype.reduce, genotype.reduce_concat)):
            cell_graph(edges, concat)
    except (MlflowException, DataError) as err:
        raise DataError(f"run {run_name} ({run_id[:8]}): bad {GENOTYPE_ARTIFACT}: {first_line(err)}") from None
    return genotype


def json_object(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    return data if isinstance(data, dict) else {}


def bytes_communicated(client: MlflowClient, run_id: str) -> float | None:
    """Bytes sent plus bytes received, summed over rounds; a round logged twice (resume) counts once."""
    per_round: dict[tuple[str, int], float] = {}
    for key in TRAFFIC_METRICS:
        for metric in client.get_metric_history(run_id, key):
            per_round[(key, metric.step)] = metric.value
    return float(sum(per_round.values())) if per_round else None


def download_client_accuracy(client: MlflowClient, run_id: str, run_name: str) -> dict[str, list[float]] | None:
    """The run's per-client accuracies before and after personalization; None for runs that did not personalize."""
    folder, _, _ = CLIENT_ACCURACY_ARTIFACT.rpartition("/")
    try:
        if CLIENT_ACCURACY_ARTIFACT not in {info.path for info in client.list_artifacts(run_id, folder)}:
            return None
        with tempfile.TemporaryDirectory() as directory:
            local_path = client.download_artifacts(run_id, CLIENT_ACCURACY_ARTIFACT, directory)
            content = json.loads(Path(local_path).read_text())
        accuracy = {key: [float(a) for a in content[key]] for key in ("before", "after")}
        if not accuracy["after"] or len(accuracy["before"]) != len(accuracy["after"]):
            raise ValueError("'before' and 'after' must be non-empty lists of the same length")
    except (MlflowException, OSError, ValueError, TypeError, KeyError) as err:
        raise DataError(f"run {run_name} ({run_id[:8]}): bad {CLIENT_ACCURACY_ARTIFACT}: {first_line(err)}") from None
    return accuracy


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
