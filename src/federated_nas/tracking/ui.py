"""Where the MLflow UI shows this project's runs, and the command that serves it on a small machine.

MLflow 3 opens an experiment on its GenAI overview unless the URL asks for the runs table, so
the links here always carry ``workflowType=machine_learning``. The UI is started with one
worker and without MLflow's job runner (GenAI jobs this project never submits): on two cores
the defaults (four workers and several job consumers) take seconds of CPU from the runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlflow.tracking import MlflowClient

RUNS_VIEW = "workflowType=machine_learning"
DEFAULT_EXPERIMENT = "Default"  # MLflow's own, never used by the project's runs
UI_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def runs_url(base: str, experiment_id: str) -> str:
    """The runs table of one experiment."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{RUNS_VIEW}"


def run_url(base: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """One run's page: its overview, or ``tab`` (``model-metrics``: its charts and step images)."""
    page = f"{run_id}/{tab}" if tab else run_id
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{page}?{RUNS_VIEW}"


def compare_url(base: str, experiment_id: str) -> str:
    """The runs' charts side by side (the runs table's chart view): every metric and step image, run beside run."""
    return f"{runs_url(base, experiment_id)}&compareRunsMode=CHART"


def experiment_urls(tracking_uri: str, base: str) -> list[tuple[str, str]]:
    """(experiment name, runs URL) for every active experiment with runs; empty when no store exists yet."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return []
    client = MlflowClient(tracking_uri)
    urls = []
    for experiment in client.search_experiments(order_by=["name ASC"]):
        if experiment.name == DEFAULT_EXPERIMENT and not client.search_runs([experiment.experiment_id],
                                                                           max_results=1):
            continue
        urls.append((experiment.name, runs_url(base, experiment.experiment_id)))
    return urls


def ui_command(tracking_uri: str, artifact_root: str | Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """``mlflow ui`` on ``tracking_uri`` with one worker: run it with ``ui_environment()``."""
    return ["mlflow", "ui", "--backend-store-uri", tracking_uri, "--default-artifact-root", str(artifact_root),
            "--host", host, "--port", str(port), "--workers", "1"]


def ui_environment() -> dict[str, str]:
    return {**os.environ, **UI_ENV}
