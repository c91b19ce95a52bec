"""Run-level tracking through Lightning's ``MLFlowLogger``: config, tags, per-round metrics, artifacts.

Round metrics are logged by the server loop with ``step=round``; client Trainers log nothing
(MLflow params are immutable, and per-client loggers would collide on them).
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from federated_nas.errors import ConfigError

MAX_PARAM_LENGTH = 250  # MLflow rejects longer param values
CONNECT_TIMEOUT_SECONDS = 5.0


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
        return  # other stores (databricks, ...) are checked by MLflow itself
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


class RunTracker:
    """Thin layer over an MLFlowLogger; with ``logger=None`` (``logger=none``) it records nothing."""

    def __init__(self, logger: MLFlowLogger | None):
        self.logger = logger
        if logger is not None:
            logger.experiment  # noqa: B018 -- creates the run now, so a bad tracking URI fails before any work

    @property
    def run_id(self) -> str | None:
        return self.logger.run_id if self.logger is not None else None

    @property
    def artifact_uri(self) -> str | None:
        return self.logger.experiment.get_run(self.run_id).info.artifact_uri if self.logger is not None else None

    def log_config(self, cfg: DictConfig) -> None:
        if self.logger is None:
            return
        flat = flatten(OmegaConf.to_container(cfg, resolve=True))
        self.logger.log_hyperparams({k: str(v)[:MAX_PARAM_LENGTH] for k, v in flat.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.logger is None:
            return
        for key, value in tags.items():
            self.logger.experiment.set_tag(self.run_id, key, str(value))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.logger is not None and metrics:
            self.logger.log_metrics(metrics, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.logger is not None:
            self.logger.experiment.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        if self.logger is not None:
            self.logger.finalize("success" if status == "FINISHED" else "failed")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b.c": value}, MLflow's flat param namespace."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}
