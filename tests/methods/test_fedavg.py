"""FedAvg: the local step is plain SGD on the client's batch (its runs: test_every_method_learns.py; its
personalization, fine-tuning: test_personal_adaptation.py)."""

from __future__ import annotations

import copy

import torch

from federated_nas.algorithms.core.local_module import SupervisedTraining
from helpers import SGD, grads, linear_model, run_one_step, tiny_batch


def test_fedavg_local_sgd_step():
    model = linear_model()
    batch = tiny_batch(3)
    reference = copy.deepcopy(model)
    g = grads(reference, batch, list(reference.parameters()))
    run_one_step(SupervisedTraining(model, SGD, lr=0.2, grad_clip=None), batch)
    for new, old, grad in zip(model.parameters(), reference.parameters(), g):
        torch.testing.assert_close(new, old - 0.2 * grad)
