"""The federated loop: sample clients, run their local work, aggregate, evaluate, log, checkpoint.

Every random choice is a function of (seed, round, client), and the full server state is
checkpointed after every round, so a resumed run reaches the same weights as one that was
never interrupted.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from federated_nas.algorithms.base import FederatedAlgorithm
from federated_nas.data.federated_data import FederatedData
from federated_nas.errors import ConfigError
from federated_nas.federation.aggregation import WeightedAverage, load_state
from federated_nas.federation.backends import LocalBackend
from federated_nas.federation.checkpoint import save_checkpoint
from federated_nas.federation.evaluation import evaluate
from federated_nas.search_space.genotypes import Genotype
from federated_nas.tracking.mlflow_tracker import RunTracker
from federated_nas.tracking.run_figures import RunFigures

log = logging.getLogger(__name__)


@dataclass
class FederationSettings:
    rounds: int = 50
    client_fraction: float = 1.0
    local_epochs: int = 1
    local_batches: int | None = None
    batch_size: int = 64
    eval_every: int = 1
    client_eval_every: int = 1
    global_test_samples: int | None = None
    eval_batch_size: int = 500

    def __post_init__(self):
        if not 0 < self.client_fraction <= 1:
            raise ConfigError(f"federation.client_fraction must be in (0, 1], got {self.client_fraction}")
        for name in ("rounds", "local_epochs", "batch_size", "eval_every", "client_eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"federation.{name} must be >= 1, got {getattr(self, name)}")
        if self.local_batches is not None and self.local_batches < 1:
            raise ConfigError(f"federation.local_batches must be >= 1 or null, got {self.local_batches}")


def sample_clients(seed: int, round_idx: int, num_clients: int, fraction: float) -> list[int]:
    """The clients of a round: a fixed-size sample that depends only on (seed, round)."""
    count = max(1, int(round(fraction * num_clients)))
    rng = np.random.default_rng([seed, round_idx, 17])
    return sorted(int(k) for k in rng.choice(num_clients, size=count, replace=False))


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class FederatedRun:
    """Drives one federated run of any ``FederatedAlgorithm`` through an execution backend."""

    def __init__(self, algorithm: FederatedAlgorithm, data: FederatedData, backend: LocalBackend,
                 settings: FederationSettings, run_dir: str | Path, seed: int, device: str = "cpu",
                 progress: bool | None = None):
        self.algorithm, self.data, self.backend = algorithm, data, backend
        self.tracker, self.figures = RunTracker(None), None  # see attach
        self.progress = progress  # None: a bar when stderr is a terminal (not in SLURM logs)
        self._bar: tqdm | None = None
        self.settings, self.run_dir, self.seed = settings, Path(run_dir), seed
        self.device = torch.device(device)
        torch.manual_seed(seed)  # the initial weights and alphas
        self.model: nn.Module = algorithm.build_model(data).to(self.device)  # the server's copy lives on its device
        self.history: list[dict[str, Any]] = []
        self.start_round = 0
        self.elapsed_before = 0.0

    def attach(self, tracker: RunTracker, figures: RunFigures | None = None) -> None:
        """Where rounds are recorded; set once the run is known to be valid (see ``runs.run_federated``)."""
        self.tracker, self.figures = tracker, figures

    def restore(self, checkpoint: dict[str, Any]) -> None:
        load_state(self.model, checkpoint["model"])
        self.history = list(checkpoint["history"])
        self.start_round = int(checkpoint["round"])
        self.elapsed_before = float(checkpoint["elapsed_seconds"])
        log.info("resuming after round %d of %d", self.start_round, self.settings.rounds)

    def run(self) -> dict[str, Any]:
        settings = self.settings
        started = time.perf_counter()
        bar = tqdm(total=settings.rounds, initial=self.start_round, desc="rounds", unit="round",
                   disable=None if self.progress is None else not self.progress, dynamic_ncols=True)
        with bar, (logging_redirect_tqdm() if not bar.disable else nullcontext()):
            self._bar = bar
            for round_idx in range(self.start_round, settings.rounds):
                round_started = time.perf_counter()
                metrics = self._run_round(round_idx)
                metrics["round_seconds"] = time.perf_counter() - round_started
                metrics["elapsed_seconds"] = self.elapsed_before + time.perf_counter() - started
                self._record(round_idx, metrics)
                bar.update(1)
        self._bar = None
        final = dict(self.history[-1]) if self.history else {}
        return final

    def _show_progress(self, clients_done: int, clients: int) -> None:
        if self._bar is None or self._bar.disable:
            return
        last = self.history[-1] if self.history else {}
        shown = f"clients {clients_done}/{clients}"
        if "global_test_acc" in last:
            shown += f", acc {last['global_test_acc']:.3f}"
        if "round_seconds" in last:
            shown += f", {last['round_seconds']:.1f} s/round"
        self._bar.set_postfix_str(shown, refresh=True)

    def _run_round(self, round_idx: int) -> dict[str, Any]:
        s = self.settings
        selected = sample_clients(self.seed, round_idx, len(self.data.clients), s.client_fraction)
        global_state = self.model.state_dict()
        average = WeightedAverage(global_state)
        compute_seconds, train_losses = [], []
        started = time.perf_counter()
        self._show_progress(0, len(selected))
        for update in self.backend.run_round(self.algorithm, self.model, [self.data.clients[k] for k in selected],
                                             round_idx, s.rounds, self.seed, s.local_epochs, s.local_batches,
                                             s.batch_size):
            average.add(update.state, update.num_samples)
            self._show_progress(average.count, len(selected))
            compute_seconds.append(update.compute_seconds)
            if "train_loss" in update.metrics:
                train_losses.append(update.metrics["train_loss"])
        self.model.load_state_dict(average.result())
        payload = state_bytes(global_state)  # what each client received and sent back this round
        metrics: dict[str, Any] = {
            "clients": len(selected),
            "bytes_sent": payload * len(selected),
            "bytes_received": payload * average.count,
            "client_compute_seconds": float(sum(compute_seconds)),
            # sampling, client runs, aggregation: compared with the compute above, the loop's overhead
            "round_train_seconds": time.perf_counter() - started,
        }
        if train_losses:
            metrics["client_train_loss"] = float(np.mean(train_losses))
        metrics.update(self.algorithm.after_aggregation(self.model, round_idx, s.rounds))
        metrics["model_bytes"] = state_bytes(self.model.state_dict())
        last = round_idx == s.rounds - 1
        if last or (round_idx + 1) % s.eval_every == 0:
            acc, loss = evaluate(self.model, self.data.global_test, s.eval_batch_size, self.device,
                                 None if last else s.global_test_samples)
            metrics.update(global_test_acc=acc, global_test_loss=loss)
        if last or (round_idx + 1) % s.client_eval_every == 0:
            accs = [evaluate(self.model, c.test, s.eval_batch_size, self.device)[0] for c in self.data.clients]
            metrics.update(client_test_acc_mean=float(np.mean(accs)), client_test_acc_std=float(np.std(accs)))
            discrete = self.algorithm.discrete_model(self.model)
            if discrete is not None:  # Table 3 of FedMetaNAS: the same round, relaxed vs made discrete
                metrics["global_test_acc_discrete"] = evaluate(discrete, self.data.global_test, s.eval_batch_size,
                                                               self.device, None if last else s.global_test_samples)[0]
        metrics.update(self.algorithm.round_report(self.model))
        return metrics

    def _record(self, round_idx: int, metrics: dict[str, Any]) -> None:
        genotype = metrics.pop("genotype", None)
        if isinstance(genotype, Genotype):
            path = genotype.save(self.run_dir / "genotype.json")
            self.tracker.log_artifact(path)
            metrics["genotype"] = genotype.to_json()
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.tracker.log_metrics(numeric, step=round_idx)
        self.history.append({"round": round_idx, **metrics})
        save_checkpoint(self.run_dir / "checkpoints", {
            "round": round_idx + 1,
            "rounds": self.settings.rounds,
            "model": self.model.state_dict(),
            "history": self.history,
            "elapsed_seconds": metrics["elapsed_seconds"],
            "mlflow_run_id": self.tracker.run_id or "",
        })
        if self.figures is not None:
            self.figures.after_round(round_idx, self.settings.rounds, self.history)
        shown = {k: round(v, 4) for k, v in numeric.items() if k in
                 ("global_test_acc", "client_test_acc_mean", "alpha_entropy", "round_seconds")}
        log.info("round %d/%d %s", round_idx + 1, self.settings.rounds, shown)
