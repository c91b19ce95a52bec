"""Why a tempered or Gumbel-relaxed supernet evaluates badly: train/eval mismatch of op weights, and of BatchNorm statistics.

    python scripts/diagnose_relaxation.py <search run dir> [--samples 2000]

Loads the run's last checkpoint at its final temperature and prints, as one JSON object:
- ``accuracy``: the global test accuracy as the server evaluates it (deterministic weights, running
  BatchNorm statistics);
- ``accuracy_test_batch_norm``: the same with BatchNorm statistics recomputed on the test samples.
  Far above ``accuracy``, the running statistics (gathered under sampled weights) are at fault;
- ``eval_max_weight`` / ``train_max_weight``: the mean, over edges, of the largest op weight of
  the deterministic relaxation and of training samples at the same temperature (equal without noise). Evaluation computes a
  near-uniform mixture when the first is low, while training saw near-one-hot paths when the
  second is high: the mixture evaluated is a network never trained.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import TensorDataset

from federated_nas.algorithms.core.aggregation import load_state
from federated_nas.cli import one_line_errors
from federated_nas.errors import ConfigError
from federated_nas.federation.checkpoint import load_latest_checkpoint
from federated_nas.federation.evaluation import evaluate
from federated_nas.runs import build, build_data
from federated_nas.search_space.relaxations import TemperedSoftmaxRelaxation

BATCH = 200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a search run's folder (config.yaml and checkpoints/)")
    parser.add_argument("--samples", type=int, default=2000, help="global test samples to evaluate (default 2000)")
    parser.add_argument("--gumbel-draws", type=int, default=1000, help="Gumbel samples per edge (default 1000)")
    return parser.parse_args(argv)


def load_final_model(run_dir: Path):
    """The run's algorithm, data and last global model, at the temperature of its last round."""
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir} is not a run folder: it has no config.yaml")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    algorithm, data = build(cfg.algorithm), build_data(cfg)
    checkpoint = load_latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise ConfigError(f"{run_dir} has no checkpoint")
    model = algorithm.build_model(data)
    if not isinstance(getattr(model, "relaxation", None), TemperedSoftmaxRelaxation):
        raise ConfigError(f"algorithm={algorithm.name} does not relax its supernet with a tempered "
                          f"(Gumbel-)softmax")
    load_state(model, checkpoint["model"])
    search = getattr(algorithm, "search", algorithm)  # FedPNAS' family runs another method's search
    search.temperature.apply(model, int(checkpoint["round"]) - 1, int(checkpoint["rounds"]))
    return model, data


@torch.no_grad()
def with_test_batch_norm(model: torch.nn.Module, samples: torch.Tensor) -> torch.nn.Module:
    """A copy whose BatchNorm statistics are the exact mean and variance over ``samples`` (deterministic weights)."""
    adapted = copy.deepcopy(model).eval()
    norms = [m for m in adapted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
        norm.train()
    for start in range(0, len(samples), BATCH):
        adapted(samples[start:start + BATCH])
    return adapted.eval()


def max_weights(model, draws: int) -> tuple[float, float]:
    """Mean over edges of the largest op weight: deterministic relaxation, and ``draws`` training samples
    (the model's own relaxation in training mode: Gumbel noise at its temperature)."""
    deterministic, sampled = [], []
    model.relaxation.train()
    try:
        for kind in model.arch_kinds:
            alpha, mask = getattr(model, f"alpha_{kind}").detach(), getattr(model, f"op_mask_{kind}")
            repeated = alpha.expand(draws, *alpha.shape)  # both on the same shape: equal when there is no noise
            for weights, into in ((model._relax(repeated, mask, deterministic=True), deterministic),
                                  (model._relax(repeated, mask, deterministic=False), sampled)):
                into.append(weights.max(-1).values.mean())
    finally:
        model.relaxation.eval()
    return float(torch.stack(deterministic).mean()), float(torch.stack(sampled).mean())


@one_line_errors
def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.manual_seed(0)  # the Gumbel draws
    model, data = load_final_model(args.run_dir)
    test = data.global_test.tensors
    subset = TensorDataset(test[0][: args.samples], test[1][: args.samples])
    device = torch.device("cpu")
    eval_max, train_max = max_weights(model, args.gumbel_draws)
    report = {
        "temperature": float(model.relaxation.temperature),
        "accuracy": evaluate(model, subset, BATCH, device)[0],
        "accuracy_test_batch_norm": evaluate(with_test_batch_norm(model, subset.tensors[0]), subset, BATCH,
                                             device)[0],
        "eval_max_weight": eval_max,
        "train_max_weight": train_max,
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
