"""Execution backends: where and how the sampled clients' local work runs.

``LocalBackend`` runs the clients one after another in the server process, each on its
assigned device (round-robin over the visible GPUs, the CPU otherwise), each through a
Lightning ``Trainer``. One worker copy of the model is reused for every client: the global
state is loaded into it, so no deep copy of the model is made per client.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from federated_nas.algorithms.core.aggregation import load_state
from federated_nas.algorithms.core.base import ClientTask, FederatedAlgorithm, RoundPlan, State
from federated_nas.data.federated_data import ClientData
from federated_nas.errors import ConfigError

if TYPE_CHECKING:  # Lightning is imported with the first client fit, not by the server (see local_module)
    import lightning as L

log = logging.getLogger(__name__)


@dataclass
class ClientUpdate:
    client_id: int
    state: State
    num_samples: int
    compute_seconds: float  # the local training loop alone, without Trainer set-up
    # what the client reports besides its model (train_loss, a reward, a child): read, never averaged
    report: State = field(default_factory=dict)
    personal: State = field(default_factory=dict)  # what the client keeps across rounds (never averaged)


@dataclass
class ClientFailure:
    """A sampled client that sent nothing usable this round: it failed, missed the deadline or died."""

    client_id: int
    reason: str


# Stream tags: one (seed, round) seeds each of the run's random streams differently, so that no
# stream repeats another's draws (client sampling, injected dropouts, the clients' own work).
SAMPLING_STREAM, DROPOUT_STREAM, CLIENT_STREAM = 17, 29, 41


def cpu_copies(values: Mapping[str, torch.Tensor | float]) -> State:
    """Detached CPU copies of a state or report (numbers as float64 scalars), for the upload."""
    return {key: value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor)
            else torch.tensor(float(value), dtype=torch.float64) for key, value in values.items()}


def client_seed(seed: int, round_idx: int, client_id: int) -> int:
    """One seed per (run, round, client): client work is reproducible whatever ran before it.

    NumPy's SeedSequence hashes the triple, as the partitions' seeds are drawn: no structure makes two
    triples share a seed, as a linear mix (seed * P + round * Q + client) does once client ids reach Q.
    """
    return int(np.random.SeedSequence([seed, round_idx, CLIENT_STREAM, client_id]).generate_state(1)[0])


def compile_options(compile: bool | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``cluster.backend.compile`` as torch.compile's keyword arguments: None when off, {} for its defaults."""
    if isinstance(compile, Mapping):
        return dict(compile)
    return {} if compile else None


@contextmanager
def no_srun_hint():
    """Mute Lightning's "srun is available but not used" hint for the span of one client fit.

    ``Trainer.fit`` asks ``SLURMEnvironment.detect()`` whether to resume an "hpc" checkpoint, even
    with an explicit cluster environment, and that check warns wherever ``srun`` is on PATH but
    did not start this process: on every local run of a machine with SLURM installed. A client fit
    is never a SLURM rank, so the hint is always wrong here; only that message is muted.
    """
    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used",
                                category=PossibleUserWarning)
        yield


def visible_gpus(accelerator: str) -> int:
    """GPUs the clients may use; asking for a GPU where none is visible is an error, not a CPU run."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but no GPU is visible to torch "
                          f"(torch.cuda.is_available() is False); use trainer.accelerator=cpu or auto")
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 0


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, cgroup cpusets, SLURM), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this OS (macOS)
        return os.cpu_count() or 1


class LocalBackend:
    """Clients run sequentially in this process, each through a fresh Lightning Trainer.

    A Trainer cannot be reused for a second fit, so each client gets one; it is built with
    logging, checkpointing, progress bars and sanity checks off, because per-client Trainers
    would otherwise write files and banners on every fit. A client fit is a single-device fit
    whatever launched this process, so each Trainer gets an explicit ``LightningEnvironment``:
    Lightning would otherwise read torchrun's or SLURM's variables as a world of ranks (see
    ``no_srun_hint`` for the one SLURM check left).
    """

    def __init__(self, trainer: Callable[..., L.Trainer], accelerator: str = "cpu",
                 compile: bool | Mapping[str, Any] | None = False):
        self.make_trainer = trainer
        self.accelerator = accelerator
        self.compile = compile_options(compile)  # the worker copy is compiled once: it serves every client after
        self._worker: nn.Module | None = None
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        # clients fit in this process, so it needs Lightning: imported now, in the thread that builds the run,
        # before the run's tracker thread may import it too (two threads importing one package can deadlock
        # on its module locks). A server whose clients run in workers (DistributedBackend) need not import it.
        import federated_nas.algorithms.core.local_module  # noqa: F401

    # The lifecycle every backend has, so a run never asks which backend it holds. Here, in one
    # process, there is nothing to prepare, serve or stop.

    def prepare(self, cfg: Any) -> None:
        """Take what the backend needs from the run config before the first round."""

    @property
    def is_worker(self) -> bool:
        """Whether this process serves another's rounds instead of running its own."""
        return False

    def serve(self, algorithm: FederatedAlgorithm) -> None:
        """A worker process's whole life; a backend without workers has none."""
        raise RuntimeError(f"{type(self).__name__} has no worker processes to serve")

    def close(self) -> None:
        """Stop what ``prepare`` or the rounds started; called after a failure too."""

    def device_for(self, position: int) -> dict[str, Any]:
        gpus = visible_gpus(self.accelerator)
        if gpus:
            return {"accelerator": "gpu", "devices": [position % gpus]}
        return {"accelerator": "cpu", "devices": 1}

    def run_round(self, algorithm: FederatedAlgorithm, global_model: nn.Module, clients: list[ClientData],
                  plan: RoundPlan, personal: Mapping[int, State] | None = None
                  ) -> Iterator[ClientUpdate | ClientFailure]:
        """Run each client in turn; past the plan's ``deadline`` (seconds) the clients not yet run are reported late.

        ``personal``: what each client kept from earlier rounds, by client id. A client whose local
        work raises is reported as a failure (with the error) and the round goes on; interrupts
        still stop the run.
        """
        if self._worker is None:
            self._worker = copy.deepcopy(global_model)
            if self.compile is not None:  # in place: the state dict keeps its keys, so loading and uploads are unchanged
                self._worker.compile(**self.compile)
        global_state, deadline, personal = global_model.state_dict(), plan.deadline, personal or {}
        started = time.perf_counter()
        for position, client in enumerate(clients):
            if deadline is not None and time.perf_counter() - started > deadline:
                yield ClientFailure(client.client_id, f"not started before the {deadline:g} s deadline")
                continue
            task = ClientTask(client, plan, client_seed(plan.seed, plan.round_idx, client.client_id),
                              dict(personal.get(client.client_id, {})))
            try:
                outcome = self._run_client(algorithm, global_state, task, position)
            except Exception as err:  # noqa: BLE001 -- one client's failure must not end the run
                log.warning("client %d failed in round %d: %s", client.client_id, plan.round_idx + 1, err)
                outcome = ClientFailure(client.client_id, f"{type(err).__name__}: {err}")
            yield outcome

    def _run_client(self, algorithm: FederatedAlgorithm, global_state: State, task: ClientTask,
                    position: int) -> ClientUpdate:
        """One client's local work on the reused worker model, through a fresh Trainer."""
        from lightning.pytorch.plugins.environments import LightningEnvironment

        load_state(self._worker, global_state)
        torch.manual_seed(task.seed)  # any randomness inside the local step (e.g. Gumbel noise)
        module = algorithm.client_module(self._worker, task)
        trainer = self.make_trainer(
            **self.device_for(position), max_epochs=task.plan.local_epochs,
            limit_train_batches=task.plan.local_batches,
            logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
            plugins=[LightningEnvironment()],
        )
        with no_srun_hint():
            trainer.fit(module, train_dataloaders=algorithm.client_loader(task))
        logged = {k: float(v) for k, v in trainer.callback_metrics.items()}  # train_loss
        return ClientUpdate(task.client.client_id, cpu_copies(self._worker.state_dict()), task.client.num_samples,
                            module.compute_seconds, cpu_copies({**logged, **module.report}),
                            cpu_copies(module.personal))
