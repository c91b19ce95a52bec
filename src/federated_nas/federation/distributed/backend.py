"""The server side: ``DistributedBackend`` deals each round's clients over the worker processes."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.distributed as dist
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from federated_nas.algorithms.core.base import FederatedAlgorithm, RoundPlan, State
from federated_nas.data.federated_data import ClientData
from federated_nas.errors import ConfigError, DataError
from federated_nas.federation.backends import ClientFailure, ClientUpdate, compile_options
from federated_nas.federation.distributed.handshake import launcher_secret, new_secret, proves
from federated_nas.federation.distributed.messages import (SERVER, LinkLost, first_sentence, recv_json, recv_outcome,
                                                           round_command, send_framed, send_json)
from federated_nas.federation.distributed.wire import encode_state
from federated_nas.federation.distributed.worker import WorkerBackend, serve_rounds, spawned_worker

if TYPE_CHECKING:  # the server does not import Lightning (see algorithms/local_module)
    import lightning as L

log = logging.getLogger(__name__)

# what a worker needs to rebuild the clients' data and the method (resolved, so plain and picklable)
WORKER_CONFIG_KEYS = ("seed", "dataset", "partition", "federation", "algorithm", "trainer")


@dataclass(frozen=True)
class LaunchPlace:
    rank: int
    world_size: int
    local_rank: int


def launcher_place() -> LaunchPlace:
    """This process's place in a group started by torchrun, or by SLURM (through submitit's helper)."""
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ConfigError(f"cluster.backend.launch=env needs {', '.join(missing)} in the environment: launch with "
                          "torchrun (cluster=torchrun) or SLURM (cluster=slurm_distributed), or use cluster=multiprocess")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world_size < 2:
        raise ConfigError(f"cluster.backend.launch=env needs at least 2 processes (a server and a worker), "
                          f"got WORLD_SIZE={world_size}")
    return LaunchPlace(rank, world_size, int(os.environ.get("LOCAL_RANK", rank)))


def worker_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved parts of the run config a worker rebuilds data and method from (plain, so picklable)."""
    picked = {}
    for key in WORKER_CONFIG_KEYS:
        value = cfg[key]
        picked[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) \
            else value
    return picked


def exit_reason(exitcode: int) -> str:
    return f"killed by signal {-exitcode}" if exitcode < 0 else f"exit code {exitcode}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class DistributedBackend:
    """The ``run_round`` contract of ``LocalBackend``, with the clients spread over worker processes.

    Each round the sampled clients are dealt round-robin over the live workers; one thread per
    worker sends it its share and receives its results, so results stream in as they arrive and
    one slow worker does not eat another's time limit. A worker that fails to answer (its
    process died, or it stayed silent past its limit) is dropped for the rest of the run and
    its clients of that round are reported as failures.
    """

    def __init__(self, trainer: Callable[..., L.Trainer], accelerator: str = "cpu", workers: int | None = 2,
                 launch: str = "spawn", worker_timeout_seconds: float = 600.0, deadline_grace_seconds: float = 30.0,
                 compile: bool | dict[str, Any] = False):
        if launch not in ("spawn", "env"):
            raise ConfigError(f"cluster.backend.launch must be spawn or env, got {launch!r}")
        if launch == "spawn" and (not isinstance(workers, int) or workers < 1):
            raise ConfigError(f"cluster.backend.workers must be an integer >= 1, got {workers}")
        for name, value in (("worker_timeout_seconds", worker_timeout_seconds),
                            ("deadline_grace_seconds", deadline_grace_seconds)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"cluster.backend.{name} must be > 0, got {value}")
        self.make_trainer, self.accelerator, self.workers, self.launch = trainer, accelerator, workers, launch
        self.compile = compile_options(compile)  # each worker compiles its copy once
        self.worker_timeout_seconds = float(worker_timeout_seconds)
        self.deadline_grace_seconds = float(deadline_grace_seconds)
        self.config: dict[str, Any] | None = None
        self._place: LaunchPlace | None = None  # launch: env only
        self._started = self._start_tried = False
        self._children: dict[int, multiprocessing.process.BaseProcess] = {}
        self._live: set[int] = set()
        self._lost: dict[int, str] = {}  # rank -> why it was dropped
        self._secret = ""  # the run's, set when the workers are started (handshake.py)

    def prepare(self, cfg: DictConfig) -> None:
        """Keep what the workers rebuild data and method from; read where this process stands."""
        self.config = worker_config(cfg)
        if self.launch == "env":
            self._place = launcher_place()

    @property
    def is_worker(self) -> bool:
        return self._place is not None and self._place.rank != SERVER

    def serve(self, algorithm: FederatedAlgorithm) -> None:
        """A launcher-started rank other than 0: run clients for the server until it says stop."""
        place = self._place
        dist.init_process_group("gloo", init_method="env://", rank=place.rank, world_size=place.world_size,
                                timeout=timedelta(seconds=self.worker_timeout_seconds))
        try:
            serve_rounds(place.rank, self.config, WorkerBackend(self.make_trainer, self.accelerator, place.local_rank,
                                                               self.compile),
                         launcher_secret(), algorithm)
        except LinkLost as err:
            log.warning("rank %d lost the server (%s); stopping", place.rank, err)
            raise SystemExit(1) from None
        finally:
            dist.destroy_process_group()

    # -- start and stop

    def _start(self) -> None:
        if self._started:
            return
        self._start_tried = True
        if self.config is None:
            raise ConfigError("cluster.backend: DistributedBackend needs the run config (runs.build_backend gives it)")
        timeout = timedelta(seconds=self.worker_timeout_seconds)
        if self.launch == "spawn":
            world_size, address = self.workers + 1, f"tcp://127.0.0.1:{free_port()}"
            self._secret = new_secret()
            context = multiprocessing.get_context("spawn")
            joining = {rank: context.Event() for rank in range(1, world_size)}
            self._children = {rank: context.Process(
                target=spawned_worker, name=f"fednas-worker-{rank}", daemon=True,
                args=(rank, world_size, address, self.config, self.accelerator, self.worker_timeout_seconds,
                      joining[rank], self._secret, self.compile)) for rank in range(1, world_size)}
            for child in self._children.values():
                child.start()
            self._await_children(joining)
        else:
            world_size, address = self._place.world_size, "env://"
            self._secret = launcher_secret()
        try:
            dist.init_process_group("gloo", init_method=address, rank=SERVER, world_size=world_size, timeout=timeout)
        except Exception as err:
            self._end_children()
            raise RuntimeError(f"the {world_size - 1} workers did not join the server within {timeout} "
                               f"({first_sentence(err)})") from err
        self._started = True
        self._live = set(range(1, world_size))
        log.info("%d workers joined over gloo (%s)", world_size - 1, address)
        until = time.monotonic() + self.worker_timeout_seconds
        for rank in sorted(self._live):
            try:
                ready = recv_json(rank, until)
            except Exception as err:  # noqa: BLE001 -- a worker that cannot start is dropped, not fatal
                self._lose(rank, err)
                continue
            if not proves(ready, self._secret, rank):
                self._refuse(rank)

    def _await_children(self, joining: dict[int, Any]) -> None:
        """Wait until every child has imported and is joining, so a child that crashes at start fails fast."""
        until = time.monotonic() + self.worker_timeout_seconds
        for rank, event in joining.items():
            child = self._children[rank]
            while not event.wait(0.2):
                if not child.is_alive() or time.monotonic() > until:
                    problem = (f"ended ({exit_reason(child.exitcode)}) before joining" if child.exitcode is not None
                               else f"did not start within {self.worker_timeout_seconds:g} s")
                    self._end_children()
                    raise RuntimeError(f"worker {rank} {problem}")

    def close(self) -> None:
        """Stop the live workers and end the process group; spawned children are joined or terminated.

        Called after a failure too, so it logs what goes wrong instead of raising over the real error.
        """
        if not self._start_tried and self._place is not None:
            try:  # launcher-started workers wait to join, also when no round ran; they must be told to stop
                self._start()
            except Exception as err:  # noqa: BLE001
                log.warning("could not reach the workers to stop them: %s", err)
        if self._started:
            until = time.monotonic() + 10.0
            for rank in sorted(self._live):
                try:
                    send_json({"command": "stop"}, rank, until)
                except Exception as err:  # noqa: BLE001 -- it is being stopped anyway
                    log.warning("worker %d did not take the stop command: %s", rank, err)
        self._end_children(stopping=self._live)
        if self._started:
            try:
                dist.destroy_process_group()
            except Exception as err:  # noqa: BLE001
                log.warning("ending the process group failed: %s", err)
            self._started = False
        self._live = set()

    def _end_children(self, stopping: set[int] = frozenset(), grace_seconds: float = 30.0) -> None:
        """Join the children told to stop; terminate the others (a dropped worker may be stuck mid-message)."""
        until = time.monotonic() + grace_seconds
        for rank, child in self._children.items():
            if rank in stopping:
                child.join(max(until - time.monotonic(), 0.1))
        for child in self._children.values():
            if child.is_alive():
                child.terminate()
                child.join(5)
            if child.is_alive():
                child.kill()
                child.join()
        self._children = {}

    def _refuse(self, rank: int) -> None:
        """A process in worker ``rank``'s place that does not know the run's secret: no clients, no model, ever."""
        reason = f"worker {rank} refused: its first message does not prove this run's secret (not part of this run)"
        self._live.discard(rank)
        self._lost[rank] = reason
        log.warning("%s; it gets no clients (%d workers left)", reason, len(self._live))

    def _lose(self, rank: int, err: BaseException, timed_out: bool = False) -> str:
        """Drop a worker for the rest of the run; the reason its clients of this round failed."""
        text = first_sentence(err)
        timed_out = timed_out or "timed out" in text.lower() or "timeout" in text.lower()
        child = self._children.get(rank)
        if child is not None:
            child.join(0.5)
            if child.exitcode is not None:
                timed_out, text = False, f"{exit_reason(child.exitcode)}; {text}"
        reason = f"worker {rank} {'timed out' if timed_out else 'died'}: {text}"
        self._live.discard(rank)
        self._lost[rank] = reason
        log.warning("%s; it gets no more clients (%d workers left)", reason, len(self._live))
        return reason

    # -- one round

    def run_round(self, algorithm: FederatedAlgorithm, global_model: nn.Module, clients: list[ClientData],
                  plan: RoundPlan, personal: dict[int, State] | None = None
                  ) -> Iterator[ClientUpdate | ClientFailure]:
        """Deal the clients over the live workers and yield their outcomes as they arrive.

        A worker silent for ``worker_timeout_seconds`` (about one client's work: it answers after
        each client) is dropped. With a ``deadline`` the workers leave unstarted the clients they
        could not start in time (as ``LocalBackend`` does), and no worker is waited for past
        ``deadline + deadline_grace_seconds``.
        """
        self._start()
        ids = [client.client_id for client in clients]
        live = sorted(self._live)
        if not live:
            for client_id in ids:
                yield ClientFailure(client_id, f"no live worker ({'; '.join(self._lost.values())})")
            return
        shares: dict[int, list[int]] = {}
        for position, client_id in enumerate(ids):
            shares.setdefault(live[position % len(live)], []).append(client_id)
        deadline = plan.deadline
        round_until = time.monotonic() + deadline + self.deadline_grace_seconds if deadline is not None else math.inf
        state = encode_state(global_model.state_dict())
        personal = personal or {}
        arrivals: queue.Queue = queue.Queue()
        for rank, share in shares.items():
            kept = {client_id: encode_state(personal.get(client_id, {})) for client_id in share}
            threading.Thread(target=self._exchange, name=f"fednas-worker-{rank}-link", daemon=True, args=(
                rank, round_command(plan, share), state, kept, round_until, arrivals)).start()
        waiting = {rank: set(share) for rank, share in shares.items()}
        while waiting:
            try:  # each link thread reports by its own limits; this bound only guards against a stuck one
                rank, item = arrivals.get(timeout=self._message_until(round_until) - time.monotonic() + 5.0)
            except queue.Empty:
                for rank, left in waiting.items():
                    reason = self._lose(rank, LinkLost("no result in time"), timed_out=True)
                    yield from (ClientFailure(client_id, reason) for client_id in sorted(left))
                return
            if isinstance(item, BaseException):
                reason = self._lose(rank, item)
                yield from (ClientFailure(client_id, reason) for client_id in sorted(waiting.pop(rank)))
                continue
            waiting[rank].discard(item.client_id)
            if not waiting[rank]:
                del waiting[rank]
            yield item

    def _message_until(self, round_until: float) -> float:
        """When the next message from a worker is due: within its silence limit and the round's deadline."""
        return min(round_until, time.monotonic() + self.worker_timeout_seconds)

    def _exchange(self, rank: int, command: dict[str, Any], state: tuple[torch.Tensor, torch.Tensor],
                  personal: dict[int, tuple[torch.Tensor, torch.Tensor]], round_until: float,
                  arrivals: queue.Queue) -> None:
        """One worker's round, in its own thread: send its share, queue each outcome, or the error."""
        try:
            until = self._message_until(round_until)
            send_json(command, rank, until)
            send_framed(*state, rank, until)
            for client_id in command["clients"]:
                send_framed(*personal[client_id], rank, until)
            waiting = set(command["clients"])
            while waiting:
                outcome = recv_outcome(rank, self._message_until(round_until))
                if outcome.client_id not in waiting:
                    raise DataError(f"answered for client {outcome.client_id}, which it was not given")
                waiting.discard(outcome.client_id)
                arrivals.put((rank, outcome))
        except Exception as err:  # noqa: BLE001 -- any failure to talk to a worker drops that worker
            arrivals.put((rank, err))
