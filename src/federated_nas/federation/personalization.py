"""After the federated search: each client adapts the global model on its own data.

Reported as mean and std of local-test accuracy before and after adaptation, with a histogram
of the clients' accuracies (the FedNAS paper's Figure 5), and each client's own genotype is
saved (for FedPNAS, that of its personal cells). The per-client accuracies are also saved as
``personalized/client_accuracy.json``, so runs can be compared afterwards without re-running.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from federated_nas.algorithms.core.base import FederatedAlgorithm, personalization_task
from federated_nas.data.federated_data import ClientData, FederatedData
from federated_nas.federation.backends import client_seed
from federated_nas.federation.evaluation import evaluate
from federated_nas.tracking.mlflow_tracker import RunTracker

CLIENT_ACCURACY = "client_accuracy.json"  # read back by tracking/run_store.py


def adapt_client(algorithm: FederatedAlgorithm, model: nn.Module, client: ClientData, batch_size: int, seed: int,
                 after_round: int, personal: dict[int, dict] | None) -> nn.Module:
    """The client's personalized model: the run's own personalization and the tuning's scoring both build it
    here, with the client's seed for ``after_round`` and what it kept across rounds."""
    task = personalization_task(client, batch_size, seed, after_round, client_seed(seed, after_round, client.client_id),
                                (personal or {}).get(client.client_id))
    return algorithm.adapt(model, task)


def personalize_clients(algorithm: FederatedAlgorithm, model: nn.Module, data: FederatedData, batch_size: int,
                        eval_batch_size: int, device, seed: int, after_round: int, run_dir: Path,
                        tracker: RunTracker, personal: dict[int, dict] | None = None) -> dict[str, Any]:
    before, after = [], []
    for client in data.clients:
        before.append(evaluate(model, client.test, eval_batch_size, device)[0])
        adapted = adapt_client(algorithm, model, client, batch_size, seed, after_round, personal)
        after.append(evaluate(adapted, client.test, eval_batch_size, device)[0])
        # a client's own architecture: its personal cells' (FedPNAS), else its adapted genotype
        genotype = getattr(adapted, "personal_genotype", None) or getattr(adapted, "genotype", None)
        if genotype is not None:
            path = genotype().save(Path(run_dir) / "personalized" / f"client_{client.client_id}.json")
            tracker.log_artifact(path, "personalized")
    metrics = {
        "personalized_acc_before_mean": float(np.mean(before)), "personalized_acc_before_std": float(np.std(before)),
        "personalized_acc_after_mean": float(np.mean(after)), "personalized_acc_after_std": float(np.std(after)),
    }
    tracker.log_metrics(metrics, step=after_round)
    path = save_client_accuracy(Path(run_dir) / "personalized" / CLIENT_ACCURACY, before, after,
                                [client.client_id for client in data.clients])
    tracker.log_artifact(path, "personalized")
    from federated_nas.tracking.plots import plot_client_histogram  # matplotlib: only where drawn

    for name, accuracies in (("before", before), ("after", after)):
        path = plot_client_histogram(accuracies, Path(run_dir) / "personalized" / f"client_accuracy_{name}.png",
                                     f"Local test accuracy per client, {name} personalization")
        tracker.log_artifact(path, "personalized")
    return metrics


def save_client_accuracy(path: Path, before: list[float], after: list[float], clients: list[int]) -> Path:
    """{"before": [...], "after": [...], "clients": [ids]}, one entry per client in the same order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"before": [float(a) for a in before], "after": [float(a) for a in after],
                                "clients": [int(c) for c in clients]}, indent=1) + "\n")
    return path
