"""Clients on several processes: rank 0 is the server, ranks 1..W are workers, over torch.distributed.

The transport is gloo on CPU tensors, also on GPU machines: an update is a few megabytes sent
once per client and round, so NCCL would gain nothing, and gloo can notice a dead peer (its
connection closes) and give up on a receive after a time limit, which the fault handling needs.
Each worker runs its clients through its own ``LocalBackend`` (the clients' work is the same
code as ``cluster=local``), on its own GPU when there are GPUs (its ``LOCAL_RANK``, or its
worker index when the server spawned it).

Launch modes (``cluster.backend.launch``):

* ``spawn`` (``cluster=multiprocess``): the server starts ``workers`` processes itself and they
  meet over ``tcp://127.0.0.1:<free port>``. Each child rebuilds the data and the method from
  the resolved run config it is given at start-up (the only pickle). A worker that dies or
  stays silent past its time limit is dropped; the run goes on with the others.
* ``env`` (``cluster=torchrun``, ``cluster=slurm_distributed``): every rank runs the entry
  point; rank 0 runs the normal run, the others serve it and return without writing anything.
  torchrun's agent ends the whole group when one process dies. SLURM (default KillOnBadExit=0)
  leaves the other tasks running, so the server drops a dead worker task and finishes the run.

Wire format (tensors only, no pickles): a state dict travels as a length-prefixed uint8
tensor holding a UTF-8 JSON list of [key, shape, dtype], then one flat float64 tensor of all
values, which is exact for float32/16, bool and integers up to 2**53 (counters). A client's
outcome is a short float64 head (client id, ok, samples, compute seconds), then its model state,
its report (train_loss, a reward, a child: whatever its local module reported) and its personal
state, each framed as a state dict.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import queue
import re
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from typing import Any, Callable, Iterator

import lightning as L
import torch
import torch.distributed as dist
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from federated_nas.algorithms.aggregation import load_state
from federated_nas.algorithms.base import FederatedAlgorithm, RoundPlan
from federated_nas.builders import build, build_data
from federated_nas.compat import quiet_libraries
from federated_nas.data.federated_data import ClientData
from federated_nas.errors import ConfigError, DataError
from federated_nas.federation.backends import (ClientFailure, ClientUpdate, LocalBackend, State, compile_options,
                                              usable_cores)

log = logging.getLogger(__name__)

SERVER = 0
# what a worker needs to rebuild the clients' data and the method (resolved, so plain and picklable)
WORKER_CONFIG_KEYS = ("seed", "dataset", "partition", "federation", "algorithm", "trainer")
# a worker waits this long for the server's next command; a server that died is noticed at once
SERVER_PATIENCE = timedelta(days=1)
# fault injection for the test suite only: "<rank>:<round index>" makes that worker SIGKILL itself
KILL_WORKER_HOOK = "FEDNAS_TEST_KILL_WORKER"

WIRE_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)}
EXACT_INTEGER = 2**53  # the largest magnitude float64 carries without rounding


# ---------------------------------------------------------------- wire format (no process group needed)

def json_tensor(value: Any) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(value).encode("utf-8")), dtype=torch.uint8)


def tensor_json(tensor: torch.Tensor) -> Any:
    try:
        return json.loads(tensor.numpy().tobytes().decode("utf-8"))
    except ValueError as err:
        raise DataError(f"malformed message header ({err})") from None


def encode_state(state: State) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 JSON header of [key, shape, dtype], flat float64 values) of a state dict."""
    entries, parts = [], []
    for key, tensor in state.items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in WIRE_DTYPES:
            raise DataError(f"state entry {key!r} is {tensor.dtype}, which the wire format cannot carry exactly")
        flat = tensor.detach().to("cpu").reshape(-1)
        if tensor.dtype == torch.int64 and flat.numel() and int(flat.abs().max()) > EXACT_INTEGER:
            raise DataError(f"state entry {key!r} holds integers beyond 2**53, which float64 would round")
        entries.append([key, list(tensor.shape), dtype])
        parts.append(flat.to(torch.float64))
    values = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)
    return json_tensor(entries), values


def decode_state(header: torch.Tensor, values: torch.Tensor) -> State:
    entries = tensor_json(header)
    if not entries:
        return {}
    counts = [math.prod(shape) for _, shape, _ in entries]
    if sum(counts) != values.numel():
        raise DataError(f"state message holds {values.numel()} values, its header describes {sum(counts)}")
    return {key: chunk.to(WIRE_DTYPES[dtype], copy=True).reshape(shape)
            for (key, shape, dtype), chunk in zip(entries, values.split(counts))}


# ---------------------------------------------------------------- messages between two ranks

def time_left(until: float | None) -> timedelta | None:
    """The limit of one operation, from an absolute monotonic time (None: the process group's default)."""
    return None if until is None else timedelta(seconds=max(until - time.monotonic(), 0.01))


def first_sentence(err: BaseException) -> str:
    """An error's gist for a one-line reason: gloo prefixes its source location and appends advice."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip())
    return text.splitlines()[0].split(". ")[0] if text else type(err).__name__


class LinkLost(RuntimeError):
    """A message could not be sent or received: the peer died, closed its end or missed the time limit."""


def _complete(start: Callable[[], dist.Work], limit: timedelta | None, what: str) -> None:
    try:
        work = start()
        done = work.wait() if limit is None else work.wait(timeout=limit)
    except Exception as err:  # noqa: BLE001 -- gloo reports a closed peer or a timeout as RuntimeError
        raise LinkLost(f"{what}: {first_sentence(err)}") from err
    if not done:
        raise LinkLost(f"{what}: timed out after {limit}")


def send_tensor(tensor: torch.Tensor, peer: int, until: float | None = None) -> None:
    _complete(lambda: dist.isend(tensor, dst=peer), time_left(until), f"sending to rank {peer}")


def recv_tensor(tensor: torch.Tensor, peer: int, until: float | None = None,
                limit: timedelta | None = None) -> torch.Tensor:
    _complete(lambda: dist.irecv(tensor, src=peer), limit or time_left(until), f"receiving from rank {peer}")
    return tensor


def send_framed(header: torch.Tensor, values: torch.Tensor, peer: int, until: float | None = None) -> None:
    """Sizes first, so the receiver can allocate; empty tensors are not sent."""
    send_tensor(torch.tensor([header.numel(), values.numel()], dtype=torch.int64), peer, until)
    for part in (header, values):
        if part.numel():
            send_tensor(part, peer, until)


def recv_framed(peer: int, until: float | None = None,
                limit: timedelta | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    header_bytes, count = recv_tensor(torch.empty(2, dtype=torch.int64), peer, until, limit).tolist()
    header = torch.empty(header_bytes, dtype=torch.uint8)
    values = torch.empty(count, dtype=torch.float64)
    for part in (header, values):
        if part.numel():
            recv_tensor(part, peer, until)
    return header, values


def send_json(value: Any, peer: int, until: float | None = None) -> None:
    send_framed(json_tensor(value), torch.empty(0, dtype=torch.float64), peer, until)


def recv_json(peer: int, until: float | None = None, limit: timedelta | None = None) -> Any:
    return tensor_json(recv_framed(peer, until, limit)[0])


def send_outcome(outcome: ClientUpdate | ClientFailure, peer: int = SERVER) -> None:
    """[client id, ok, samples, compute seconds], then model state, report and personal state (each as a
    state dict), or the failure's reason."""
    ok = isinstance(outcome, ClientUpdate)
    head = [outcome.client_id, float(ok), outcome.num_samples if ok else 0, outcome.compute_seconds if ok else 0]
    send_tensor(torch.tensor(head, dtype=torch.float64), peer)
    if ok:
        for part in (outcome.state, outcome.report, outcome.personal):
            send_framed(*encode_state(part), peer)
    else:
        send_json({"reason": outcome.reason}, peer)


def recv_outcome(peer: int, until: float | None) -> ClientUpdate | ClientFailure:
    client_id, ok, samples, seconds = recv_tensor(torch.empty(4, dtype=torch.float64), peer, until).tolist()
    if not ok:
        return ClientFailure(int(client_id), str(recv_json(peer, until)["reason"]))
    state, report, personal = (decode_state(*recv_framed(peer, until)) for _ in range(3))
    return ClientUpdate(int(client_id), state, int(samples), seconds, report, personal)


# ---------------------------------------------------------------- where this process stands

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


# ---------------------------------------------------------------- the worker side

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


def serve_rounds(rank: int, config: dict[str, Any], runner: LocalBackend,
                 algorithm: FederatedAlgorithm | None = None) -> None:
    """A worker's life: rebuild data, method and model, report ready, then run what the server sends."""
    cfg = OmegaConf.create(config)
    algorithm = algorithm or build(cfg.algorithm)
    data = build_data(cfg)
    model = algorithm.build_model(data)  # the structure only: each round's global state is loaded into it
    send_json({"ready": rank}, SERVER)
    while True:
        command = recv_json(SERVER, limit=SERVER_PATIENCE)
        if command["command"] == "stop":
            return
        plan = RoundPlan(**{field.name: command[field.name] for field in fields(RoundPlan)})
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
                   timeout_seconds: float, joining: Any, compile: dict[str, Any] | None = None) -> None:
    """Entry of a worker process the server started (``launch: spawn``); ``joining`` is set once imported."""
    from hydra.utils import instantiate

    logging.basicConfig(level=logging.INFO, format=f"[worker {rank}] %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    # workers started on one machine share its cores: each taking all of them (torch's default)
    # oversubscribes the CPU, measured 9-14x slower per client with 2 workers on 2 cores
    torch.set_num_threads(worker_threads(world_size - 1))
    joining.set()
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_seconds))
    try:
        runner = WorkerBackend(instantiate(config["trainer"]), accelerator, gpu_slot=rank - 1, compile=compile)
        serve_rounds(rank, config, runner)
    except LinkLost as err:  # the server ended, or gave up on this worker: nothing left to do
        log.warning("lost the server (%s); stopping", err)
        raise SystemExit(1) from None
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- the server side

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
                         algorithm)
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
            context = multiprocessing.get_context("spawn")
            joining = {rank: context.Event() for rank in range(1, world_size)}
            self._children = {rank: context.Process(
                target=spawned_worker, name=f"fednas-worker-{rank}", daemon=True,
                args=(rank, world_size, address, self.config, self.accelerator, self.worker_timeout_seconds,
                      joining[rank], self.compile)) for rank in range(1, world_size)}
            for child in self._children.values():
                child.start()
            self._await_children(joining)
        else:
            world_size, address = self._place.world_size, "env://"
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
                recv_json(rank, until)
            except Exception as err:  # noqa: BLE001 -- a worker that cannot start is dropped, not fatal
                self._lose(rank, err)

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
        command = {"command": "round", **asdict(plan)}
        state = encode_state(global_model.state_dict())
        personal = personal or {}
        arrivals: queue.Queue = queue.Queue()
        for rank, share in shares.items():
            kept = {client_id: encode_state(personal.get(client_id, {})) for client_id in share}
            threading.Thread(target=self._exchange, name=f"fednas-worker-{rank}-link", daemon=True, args=(
                rank, {**command, "clients": share}, state, kept, round_until, arrivals)).start()
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
