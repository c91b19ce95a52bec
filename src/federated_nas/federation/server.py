"""The federated loop: sample clients, run their local work, aggregate, evaluate, log, checkpoint.

Every random choice is a function of (seed, round, client), and the full server state is
checkpointed after every round, so a resumed run reaches the same weights as one that was
never interrupted.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from federated_nas.algorithms.core.aggregation import WeightedAverage, clip_update
from federated_nas.algorithms.core.base import FederatedAlgorithm, RoundPlan
from federated_nas.data.federated_data import FederatedData
from federated_nas.errors import ConfigError, DataError, RunStopped
from federated_nas.federation.backends import (DROPOUT_STREAM, SAMPLING_STREAM, ClientFailure, ClientUpdate,
                                                LocalBackend)
from federated_nas.federation.checkpoint import save_checkpoint
from federated_nas.federation.evaluation import evaluate, evaluate_prefixes
from federated_nas.federation.preemption import StopSignals
from federated_nas.models.budget import state_bytes
from federated_nas.tracking.mlflow_tracker import RunTracker
from federated_nas.tracking.run_figures import RunFigures
from federated_nas.tracking.run_record import GENOTYPE_TABLE, GENOTYPE_TAG, SAMPLED, curve_accuracy

log = logging.getLogger(__name__)
INJECTED_DROPOUT = "injected dropout"


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
    # faults: a round aggregates the clients that responded in time with a valid update
    deadline_seconds: float | None = None  # stop waiting for clients after this long (null: wait for all)
    min_responders: int = 1  # fewer valid updates than this: the round is run again, not aggregated
    max_round_attempts: int = 3
    dropout_probability: float = 0.0  # injected: each sampled client fails with this probability (testing)
    update_clip_norm: float | None = None  # clip each update (client weights - global weights) to this L2 norm

    def __post_init__(self):
        if not 0 < self.client_fraction <= 1:
            raise ConfigError(f"federation.client_fraction must be in (0, 1], got {self.client_fraction}")
        for name in ("rounds", "local_epochs", "batch_size", "eval_every", "client_eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"federation.{name} must be >= 1, got {getattr(self, name)}")
        if self.local_batches is not None and self.local_batches < 1:
            raise ConfigError(f"federation.local_batches must be >= 1 or null, got {self.local_batches}")
        if not 0 <= self.dropout_probability < 1:
            raise ConfigError(f"federation.dropout_probability must be in [0, 1), got {self.dropout_probability}")
        for name in ("min_responders", "max_round_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"federation.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("deadline_seconds", "update_clip_norm"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"federation.{name} must be > 0 or null, got {getattr(self, name)}")


class RoundFailed(RuntimeError):
    """Too few clients responded with a valid update, in every attempt of a round."""


def injected_dropouts(seed: int, round_idx: int, attempt: int, clients: list[int], probability: float) -> set[int]:
    """The clients that fail on purpose in this attempt: a function of (seed, round, attempt) only."""
    if probability <= 0:
        return set()
    draws = np.random.default_rng([seed, round_idx, attempt, DROPOUT_STREAM]).random(len(clients))
    return {client for client, draw in zip(clients, draws) if draw < probability}


def build_model_within_memory(algorithm: FederatedAlgorithm, data: FederatedData) -> nn.Module:
    """The method's model; one line, not an allocator traceback, where a width setting makes it too large."""
    try:
        return algorithm.build_model(data)
    except (torch.OutOfMemoryError, RuntimeError, TypeError, OverflowError) as err:
        # out of memory, or a size past what a tensor's shape can hold (torch: "Overflow when unpacking long")
        if not (isinstance(err, torch.OutOfMemoryError) or "memory" in str(err) or "verflow" in str(err)):
            raise
        raise ConfigError(f"algorithm={algorithm.name}: its model is too large to build "
                          f"({str(err).splitlines()[0][:120]}); check the width settings (search_space.C, "
                          "stem_multiplier, model widths, model.pooled_size)") from None


def clients_per_round(num_clients: int, fraction: float) -> int:
    """How many clients every round samples (``federation.client_fraction`` of them, at least one)."""
    return max(1, int(round(fraction * num_clients)))


def sample_clients(seed: int, round_idx: int, num_clients: int, fraction: float) -> list[int]:
    """The clients of a round: a fixed-size sample that depends only on (seed, round)."""
    count = clients_per_round(num_clients, fraction)
    rng = np.random.default_rng([seed, round_idx, SAMPLING_STREAM])
    return sorted(int(k) for k in rng.choice(num_clients, size=count, replace=False))


@torch.no_grad()
def check_model_reads(model: nn.Module, sample_shape: tuple[int, ...], algorithm: str) -> None:
    """One line, before any round, when the built model cannot take the dataset's samples.

    A one-sample forward in eval mode: it draws no random numbers and changes no statistics, so
    the run is the same as without it. (An image model on vector data fails here, not in a client.)
    """
    was_training = model.training
    model.eval()
    try:
        device = next(iter(model.parameters())).device
        model(torch.zeros(1, *sample_shape, device=device))
    except (RuntimeError, ValueError, IndexError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"the model of algorithm={algorithm} cannot read the dataset's samples of shape "
                          f"{list(sample_shape)} ({reason}): choose a model or search space for them "
                          f"(vector data: model=mlp, search_space=mlp)") from None
    finally:
        model.train(was_training)


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
        self.model: nn.Module = build_model_within_memory(algorithm, data).to(self.device)  # the server's copy
        check_model_reads(self.model, data.input_shape, algorithm.name)
        self.history: list[dict[str, Any]] = []
        self.latest_genotype = None  # the architecture record of the last round that derived one
        self.personal: dict[int, dict[str, torch.Tensor]] = {}  # per-client state kept across rounds
        self.start_round = 0
        self.elapsed_before = 0.0
        self.stop: StopSignals | None = None  # set by the caller: a signal ends the run after the round's checkpoint

    def attach(self, tracker: RunTracker, figures: RunFigures | None = None) -> None:
        """Where rounds are recorded; set once the run is known to be valid (see ``runs.run_federated``)."""
        self.tracker, self.figures = tracker, figures

    def restore(self, checkpoint: dict[str, Any]) -> None:
        self.algorithm.restore(self.model, checkpoint)
        self.history = list(checkpoint["history"])
        self.personal = {int(k): v for k, v in checkpoint.get("personal", {}).items()}
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
                if self.stop is not None and self.stop.requested and round_idx + 1 < settings.rounds:
                    raise RunStopped(self.stop.name, self.stop.exit_code, round_idx + 1, str(self.run_dir))
        self._bar = None
        final = dict(self.history[-1]) if self.history else {}
        return final

    def _collect(self, round_idx: int, attempt: int, selected: list[int], global_state: dict[str, torch.Tensor]
                 ) -> tuple[WeightedAverage, dict[int, str], list[ClientUpdate]]:
        """One attempt at a round: dispatch, then average every valid update that comes back in time."""
        s = self.settings
        average, failures, collected = self.algorithm.aggregator(self.model, global_state), {}, []
        dropped = injected_dropouts(self.seed, round_idx, attempt, selected, s.dropout_probability)
        failures.update({k: INJECTED_DROPOUT for k in dropped})
        dispatched = [self.data.clients[k] for k in selected if k not in dropped]
        trainable = [name for name, _ in self.model.named_parameters()]
        self._show_progress(0, len(selected))
        plan = RoundPlan(round_idx, s.rounds, self.seed, s.local_epochs, s.local_batches, s.batch_size,
                         s.deadline_seconds, self.algorithm.round_values())
        for outcome in self.backend.run_round(self.algorithm, self.model, dispatched, plan, self.personal):
            if isinstance(outcome, ClientFailure):
                failures[outcome.client_id] = outcome.reason
                continue
            state = outcome.state
            try:
                if s.update_clip_norm is not None:
                    state = clip_update(state, global_state, trainable, s.update_clip_norm)
                average.add(state, outcome.num_samples, outcome.report)
            except DataError as err:  # a bad update is left out, never averaged in
                failures[outcome.client_id] = f"rejected update: {err}"
                continue
            collected.append(replace(outcome, state={}))  # the average holds the weights; keep the rest
            self._show_progress(average.count, len(selected))
        return average, failures, collected

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
        # a line where no progress bar is drawn (logs, pipes): scripts/bench_startup.py times launch to the first
        log.info("round %d/%d started: %d clients", round_idx + 1, s.rounds, len(selected))
        global_state = self.model.state_dict()
        started = time.perf_counter()
        for attempt in range(s.max_round_attempts):
            average, failures, collected = self._collect(round_idx, attempt, selected, global_state)
            if average.count >= s.min_responders:
                break
            log.warning("round %d attempt %d: %d of %d clients responded (federation.min_responders=%d); "
                        "running the round again", round_idx + 1, attempt + 1, average.count, len(selected),
                        s.min_responders)
        else:
            last = next(iter(failures.values()), "none")
            raise RoundFailed(f"round {round_idx + 1}: fewer than federation.min_responders={s.min_responders} "
                              f"valid updates in {s.max_round_attempts} attempts; last failure: {last}")
        self.model.load_state_dict(average.result())
        for update in collected:
            if update.personal:
                self.personal[update.client_id] = update.personal
        payload = state_bytes(global_state)  # what each client received and sent back this round
        metrics: dict[str, Any] = {
            "clients": len(selected),
            "responders": average.count,
            "dropped_clients": len(failures),
            "round_attempts": attempt + 1,
            "failures": {str(k): v for k, v in failures.items()},  # who dropped and why (history only)
            # clients failed by injection were never sent the model (a real dropout is only known later)
            "bytes_sent": payload * (len(selected) - sum(v == INJECTED_DROPOUT for v in failures.values())),
            "bytes_received": payload * average.count,
            "client_compute_seconds": float(sum(u.compute_seconds for u in collected)),
            # sampling, client runs, aggregation: compared with the compute above, the loop's overhead
            "round_train_seconds": time.perf_counter() - started,
        }
        if failures:
            log.warning("round %d: %d client(s) left out: %s", round_idx + 1, len(failures),
                        "; ".join(f"{k}: {v}" for k, v in failures.items()))
        train_losses = [float(u.report["train_loss"]) for u in collected if "train_loss" in u.report]
        if train_losses:
            metrics["client_train_loss"] = float(np.mean(train_losses))
        last = round_idx == s.rounds - 1
        metrics.update(self.algorithm.after_aggregation(
            self.model, round_idx, s.rounds,
            lambda model: evaluate(model, self.data.global_test, s.eval_batch_size, self.device)[0]))
        metrics["model_bytes"] = state_bytes(self.model.state_dict())
        if last or (round_idx + 1) % s.eval_every == 0:
            acc, loss = self._evaluate_global(self.model, last, metrics, ("global_test_acc", "global_test_loss"))
            metrics.update(global_test_acc=acc, global_test_loss=loss)
        if last or (round_idx + 1) % s.client_eval_every == 0:
            accs = [evaluate(self.model, c.test, s.eval_batch_size, self.device)[0] for c in self.data.clients]
            metrics.update(client_test_acc_mean=float(np.mean(accs)), client_test_acc_std=float(np.std(accs)))
            discrete = self.algorithm.discrete_model(self.model)
            if discrete is not None:  # Table 3 of FedMetaNAS: the same round, relaxed vs made discrete
                metrics["global_test_acc_discrete"] = self._evaluate_global(discrete, last, metrics,
                                                                            ("global_test_acc_discrete",))[0]
        metrics.update(self.algorithm.round_report(self.model))
        if self.algorithm.final_params_metric in metrics:  # one name for every method's deliverable size
            metrics["final_model_params"] = metrics[self.algorithm.final_params_metric]
        return metrics

    def _evaluate_global(self, model: nn.Module, last: bool, metrics: dict[str, Any],
                         keys: tuple[str, ...]) -> tuple[float, float]:
        """(accuracy, loss) on the global test set: its first ``global_test_samples`` between rounds,
        all of it at the last round. There the sampled evaluation is kept too, as ``<key>_sampled``,
        so the round curve is measured the same way up to its last point."""
        s = self.settings
        sample, test = s.global_test_samples, self.data.global_test
        if last and sample is not None and sample < len(test):  # both in one pass: the sample is a prefix
            sampled, full = evaluate_prefixes(model, test, [sample, len(test)], s.eval_batch_size, self.device)
            metrics.update({f"{key}{SAMPLED}": value for key, value in zip(keys, sampled)})
            return full
        return evaluate(model, test, s.eval_batch_size, self.device, None if last else sample)

    def _record(self, round_idx: int, metrics: dict[str, Any]) -> None:
        last = round_idx == self.settings.rounds - 1
        genotype = metrics.pop("genotype", None)
        metrics.update(self._best_so_far(round_idx, metrics))
        if genotype is not None:  # any architecture record with save() and to_json(): DARTS' Genotype, MLPGenotype
            path = genotype.save(self.run_dir / "genotype.json")
            self.tracker.log_artifact(path)
            self.latest_genotype = genotype
            self.tracker.set_tags({GENOTYPE_TAG: repr(genotype)})  # DARTS' one-line form, the latest round's
            self.tracker.log_table_rows({"round": [round_idx + 1], "genotype": [repr(genotype)],
                                         "global_test_acc": [curve_accuracy(metrics)]}, self.run_dir / GENOTYPE_TABLE)
            metrics["genotype"] = genotype.to_json()
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.tracker.log_metrics(numeric, step=round_idx + 1, final_round=last)  # rounds count from 1, as logged
        self.history.append({"round": round_idx, **metrics})
        save_checkpoint(self.run_dir / "checkpoints", {
            "round": round_idx + 1,
            "rounds": self.settings.rounds,
            "model": self.model.state_dict(),
            "personal": {str(k): v for k, v in self.personal.items()},
            "history": self.history,
            "elapsed_seconds": metrics["elapsed_seconds"],
            "algorithm_state": self.algorithm.server_state(self.model),
            "mlflow_run_id": self.tracker.run_id or "",
        })
        if self.figures is not None:
            self.figures.after_round(round_idx, self.settings.rounds, self.history)
        shown = {k: round(v, 4) for k, v in numeric.items() if k in
                 ("global_test_acc", "client_test_acc_mean", "alpha_entropy", "round_seconds")}
        log.info("round %d/%d %s", round_idx + 1, self.settings.rounds, shown)

    def _best_so_far(self, round_idx: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """The best point of the round accuracy curve up to this round, and its round (from 1)."""
        previous = next((entry for entry in reversed(self.history) if "best_global_test_acc" in entry), None)
        best = {} if previous is None else {key: previous[key] for key in ("best_global_test_acc", "best_round")}
        accuracy = curve_accuracy(metrics)
        if accuracy is not None and (not best or accuracy > best["best_global_test_acc"]):
            best = {"best_global_test_acc": accuracy, "best_round": round_idx + 1}
        return best

