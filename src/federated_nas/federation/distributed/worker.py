"""A worker's life: rebuild data, method and model from the run config, then run the clients the server sends."""

from __future__ import annotations

import logging
import os
import signal
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from federated_nas.algorithms.core.aggregation import load_state
from federated_nas.algorithms.core.base import FederatedAlgorithm
from federated_nas.builders import TrainerFactory, build, build_data
from federated_nas.compat import quiet_libraries
from federated_nas.federation.backends import LocalBackend, usable_cores
from federated_nas.federation.distributed.handshake import worker_proof
from federated_nas.federation.distributed.messages import (SERVER, LinkLost, recv_framed, recv_json, round_plan,
                                                           send_json, send_outcome)
from federated_nas.federation.distributed.wire import decode_state

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger(__name__)

# a worker waits this long for the server's next command; a server that died is noticed at once
SERVER_PATIENCE = timedelta(days=1)
# fault injection for the test suite only: "<rank>:<round index>" makes that worker SIGKILL itself
KILL_WORKER_HOOK = "FEDNAS_TEST_KILL_WORKER"


class WorkerBackend(LocalBackend):
    """A worker's LocalBackend: its clients run on its own GPU (LocalBackend's Trainers ignore the launcher)."""

    def __init__(self, trainer: Callable[..., L.Trainer], accelerator: str, gpu_slot: int,
                 compile: dict[str, Any] | None = None):
        super().__init__(trainer, accelerator, compile)
        self.gpu_slot = gpu_slot

    def device_for(self, position: int) -> dict[str, Any]:
        return super().device_for(self.gpu_slot)


def crash_if_asked(rank: int, round_idx: int) -> None:
    """Fault injection for the tests (see KILL_WORKER_HOOK): die the way a killed process does."""
    if os.environ.get(KILL_WORKER_HOOK) == f"{rank}:{round_idx}":
        os.kill(os.getpid(), signal.SIGKILL)


def serve_rounds(rank: int, config: dict[str, Any], runner: LocalBackend, secret: str,
                 algorithm: FederatedAlgorithm | None = None) -> None:
    """A worker's life: rebuild data, method and model, report ready (proving the run's secret), then run what
    the server sends."""
    cfg = OmegaConf.create(config)
    algorithm = algorithm or build(cfg.algorithm)
    data = build_data(cfg)
    model = algorithm.build_model(data)  # the structure only: each round's global state is loaded into it
    send_json({"ready": rank, "proof": worker_proof(secret, rank)}, SERVER)
    while True:
        command = recv_json(SERVER, limit=SERVER_PATIENCE)
        if command["command"] == "stop":
            return
        plan = round_plan(command)
        crash_if_asked(rank, plan.round_idx)
        global_state = decode_state(*recv_framed(SERVER))
        personal = {client_id: decode_state(*recv_framed(SERVER)) for client_id in command["clients"]}
        load_state(model, global_state)  # adopts a pruned structure first
        clients = [data.clients[client_id] for client_id in command["clients"]]
        for outcome in runner.run_round(algorithm, model, clients, plan, personal):
            send_outcome(outcome)


def worker_threads(workers: int, cores: int | None = None) -> int:
    """CPU threads for each of ``workers`` processes spawned on one machine: an even share of its cores."""
    return max(1, (cores or usable_cores()) // max(workers, 1))


def spawned_worker(rank: int, world_size: int, address: str, config: dict[str, Any], accelerator: str,
                   timeout_seconds: float, joining: Any, secret: str, compile: dict[str, Any] | None = None) -> None:
    """Entry of a worker process the server started (``launch: spawn``); ``joining`` is set once imported."""

    logging.basicConfig(level=logging.INFO, format=f"[worker {rank}] %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    # workers started on one machine share its cores: each taking all of them (torch's default)
    # oversubscribes the CPU, measured 9-14x slower per client with 2 workers on 2 cores
    torch.set_num_threads(worker_threads(world_size - 1))
    joining.set()
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_seconds))
    try:
        runner = WorkerBackend(TrainerFactory(config["trainer"]), accelerator, gpu_slot=rank - 1, compile=compile)
        serve_rounds(rank, config, runner, secret)
    except LinkLost as err:  # the server ended, or gave up on this worker: nothing left to do
        log.warning("lost the server (%s); stopping", err)
        raise SystemExit(1) from None
    finally:
        dist.destroy_process_group()
