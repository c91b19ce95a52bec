"""The planted-architecture task: a search that works moves alpha to the one op that solves it.

``dataset=planted_xor``: label = sign(x_0) XOR sign(x_1); one mixed layer over none, skip_connect,
linear and linear_relu, of which only linear_relu solves it (a uniform alpha gives it weight 1/4).
``scripts/bench_planted.py`` runs the longer version over seeds and methods.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from federated_nas.data.vectors import make_planted_xor_dataset
from federated_nas.federation.checkpoint import load_latest_checkpoint
from federated_nas.runs import run_search
from federated_nas.search_space.mlp import MLPGenotype

# 5 near-IID clients (the planted op is the point here, not heterogeneity), 6 rounds of 3 local epochs
PLANTED = ["dataset=planted_xor", "logger=none", "federation.num_clients=5", "federation.rounds=6",
           "partition.alpha=100",
           "federation.local_batches=null", "federation.batch_size=32", "federation.local_epochs=3",
           "federation.client_eval_every=1000", "algorithm.lr=0.1"]


def test_planted_labels_are_the_xor_of_two_signs():
    data = make_planted_xor_dataset(num_features=4, train_size=300, test_size=50, seed=1)
    x, y = data.train_x, data.train_y
    assert ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long().equal(y)
    assert 0.4 < float(y.float().mean()) < 0.6 and data.in_channels == 4


@pytest.mark.parametrize("seed", [0, 1])
def test_fedmetanas_recovers_the_planted_op(tiny_cfg, seed):
    final = run_search(tiny_cfg("search", [*PLANTED, "algorithm=fedmetanas", f"seed={seed}"]))
    history = load_latest_checkpoint(Path(final["run_dir"]) / "checkpoints")["history"]
    probabilities = history[-1]["alpha_probabilities"]
    planted = probabilities["layers"][0][probabilities["primitives"].index("linear_relu")]
    assert planted > 0.5  # from 0.25: the search moved its weight to the op that solves the task
    assert MLPGenotype.load(Path(final["run_dir"]) / "genotype.json").layers == ["linear_relu"]
    assert final["global_test_acc"] > 0.8  # and the pruned supernet solves XOR without retraining
