"""A finished run's final global model scored on data it never trained on, for choosing settings.

Hyperparameters must be picked on data the reported numbers never see: the global test set is what
the tables report, so a tuning protocol scores each run on the union of the clients' holdout splits
(``federation.split``'s 4th fraction) instead. The NAS methods fit alpha on the val splits, so those
are only the fallback for runs that held nothing out. The score is computed after the fact from the
run dir (its config.yaml and last checkpoint), so any run of any method can be scored without changing
how runs record metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import TensorDataset

from federated_nas.algorithms.core.base import FederatedAlgorithm
from federated_nas.builders import build, build_data
from federated_nas.data.federated_data import FederatedData
from federated_nas.errors import DataError
from federated_nas.federation.checkpoint import LAST, read_checkpoint
from federated_nas.federation.evaluation import evaluate
from federated_nas.federation.personalization import adapt_client


def scoring_split(data: FederatedData) -> tuple[str, TensorDataset]:
    """(its name, every client's holdout split concatenated in client order), or their val splits when
    the run held nothing out. The holdout is what no method trained on; the NAS methods fit alpha on val."""
    name = "holdout" if all(client.holdout is not None and len(client.holdout) for client in data.clients) else "val"
    splits = [getattr(client, name) for client in data.clients]
    return name, TensorDataset(*(torch.cat(parts) for parts in zip(*(split.tensors for split in splits))))


@dataclass(frozen=True)
class FinishedRun:
    """A finished run rebuilt from its dir: config, method, last global model, data and last checkpoint."""

    cfg: DictConfig
    algorithm: FederatedAlgorithm
    model: nn.Module
    data: FederatedData
    checkpoint: dict


def finished_run(run_dir: str | Path) -> FinishedRun:
    """The run rebuilt from config.yaml and checkpoints/last.pt.

    The data is rebuilt from the same config and seed, so the clients' splits are the run's own.
    """
    run_dir = Path(run_dir)
    config_path, checkpoint_path = run_dir / "config.yaml", run_dir / "checkpoints" / LAST
    if not config_path.is_file():
        raise DataError(f"{run_dir}: no config.yaml; is it the dir of a run that started?")
    checkpoint = read_checkpoint(checkpoint_path)
    if checkpoint.get("round") != checkpoint.get("rounds"):
        raise DataError(f"{run_dir}: checkpoint after round {checkpoint.get('round')} of {checkpoint.get('rounds')}; "
                        f"the run did not finish (resume it first)")
    cfg = OmegaConf.load(config_path)
    data = build_data(cfg)
    algorithm = build(cfg.algorithm)
    model = algorithm.build_model(data)
    algorithm.restore(model, checkpoint)  # its server state too: e.g. the value a schedule ended at
    return FinishedRun(cfg, algorithm, model, data, checkpoint)


def validation_score(run_dir: str | Path, batch_size: int = 500) -> dict[str, float | str]:
    """``val_acc``, ``val_loss`` and ``val_samples`` of the run's final global model on the union of the
    clients' holdout splits (``scored_on``: holdout), or of their val splits where it held none out.

    A run with personalize=true also gets ``personal_val_acc`` and ``personal_val_loss``: the mean over
    clients of each client's personalized model (built as the run's personalization builds it) on that
    client's own holdout (or val) split, as the tables' local accuracy is a mean over clients' test splits.
    """
    run = finished_run(run_dir)
    scored_on, split = scoring_split(run.data)
    acc, loss = evaluate(run.model, split, batch_size)
    score = {"val_acc": acc, "val_loss": loss, "val_samples": len(split), "scored_on": scored_on}
    if run.cfg.get("personalize"):
        personal = {int(k): v for k, v in run.checkpoint.get("personal", {}).items()}
        local = [evaluate(adapt_client(run.algorithm, run.model, client, int(run.cfg.federation.batch_size),
                                       int(run.cfg.seed), int(run.checkpoint["rounds"]), personal),
                          getattr(client, scored_on), batch_size)
                 for client in run.data.clients]
        score.update(personal_val_acc=float(np.mean([a for a, _ in local])),
                     personal_val_loss=float(np.mean([l for _, l in local])))
    return score


def final_metrics(run_dir: str | Path) -> dict[str, float]:
    """The numeric metrics of the run's last round, as its checkpoint history keeps them (plain names)."""
    checkpoint = read_checkpoint(Path(run_dir) / "checkpoints" / LAST)
    last = checkpoint["history"][-1] if checkpoint.get("history") else {}
    return {k: float(v) for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
