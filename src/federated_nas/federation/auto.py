"""``cluster=auto``, the default: a round's clients in parallel worker processes sized to the machine.

On a CPU, one-thread processes side by side beat one process that gives every core to each client
in turn: a supernet step's small convolutions scale poorly over threads (on 2 cores, 2 one-thread
workers ran a round in 24.5 s against about 50 s in one process; README, "Supernet speed"). So the
run takes ``usable cores // threads_per_worker`` workers, and never more than the clients of a
round, since a worker without a client only costs start-up and memory. A GPU is one device that
serves its clients in turn, so the run takes one worker per visible GPU. Where that comes to one
worker, spawning would only add start-up: the clients run in this process (``LocalBackend``).
Workers are ``cluster=multiprocess``'s, so the global model is the one ``cluster=local`` reaches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from federated_nas.errors import ConfigError
from federated_nas.federation.backends import LocalBackend, usable_cores, visible_gpus
from federated_nas.federation.distributed import DistributedBackend
from federated_nas.federation.server import clients_per_round

if TYPE_CHECKING:  # the server does not import Lightning (see algorithms/local_module)
    import lightning as L

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerPlan:
    workers: int  # 1: the clients run in this process
    why: str


def plan_workers(per_round: int, cores: int, gpus: int = 0, threads_per_worker: int = 1,
                 max_workers: int | None = None) -> WorkerPlan:
    """How many worker processes a round of ``per_round`` clients gets on this machine, and why."""
    if threads_per_worker < 1 or (max_workers is not None and max_workers < 1):
        raise ConfigError(f"cluster.backend.threads_per_worker and max_workers must be >= 1, "
                          f"got {threads_per_worker} and {max_workers}")
    if gpus:
        workers, why = min(gpus, per_round), f"{gpus} GPU(s), {per_round} clients per round"
    else:
        workers = min(cores // threads_per_worker, per_round)
        why = f"{cores} usable cores, {threads_per_worker} thread(s) per worker, {per_round} clients per round"
    if max_workers is not None and workers > max_workers:
        workers, why = max_workers, f"{why}, max_workers={max_workers}"
    return WorkerPlan(max(workers, 1), why)


def auto_backend(trainer: Callable[..., L.Trainer], accelerator: str = "cpu",
                 compile: bool | Mapping[str, Any] | None = False, num_clients: int = 1,
                 client_fraction: float = 1.0, threads_per_worker: int = 1, max_workers: int | None = None,
                 worker_timeout_seconds: float = 600.0, deadline_grace_seconds: float = 30.0
                 ) -> LocalBackend | DistributedBackend:
    """``LocalBackend`` where the plan is one worker, else ``DistributedBackend`` spawning the planned workers."""
    plan = plan_workers(clients_per_round(num_clients, client_fraction), usable_cores(),
                        visible_gpus(accelerator), threads_per_worker, max_workers)
    if plan.workers == 1:
        log.info("cluster=auto: clients in this process (%s)", plan.why)
        return LocalBackend(trainer, accelerator, compile)
    log.info("cluster=auto: clients in %d worker processes (%s)", plan.workers, plan.why)
    return DistributedBackend(trainer, accelerator, workers=plan.workers, launch="spawn",
                              worker_timeout_seconds=worker_timeout_seconds,
                              deadline_grace_seconds=deadline_grace_seconds, compile=compile)
