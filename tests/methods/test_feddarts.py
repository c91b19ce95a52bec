"""FedDARTS, the worked example of a new method (docs/adding-a-method.md): its known-answer step, and what its
run leaves behind."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from federated_nas.algorithms.nas.feddarts import FirstOrderDARTSSearch
from federated_nas.search_space.supernet import SearchNetwork
from helpers import SGD, grads, run_one_step, tiny_batch


def test_first_order_darts_step():
    """w <- w - lr_w g_w(L_train);  alpha <- alpha - lr_a g_a(L_val), both at the same (w, alpha)."""
    torch.manual_seed(0)
    model = SearchNetwork(1, 3, C=2, layers=1)
    train, val = tiny_batch(1), tiny_batch(2)
    reference = copy.deepcopy(model)
    weights, alphas = reference.weight_parameters(), reference.arch_parameters()
    g_w, g_a = grads(reference, train, weights), grads(reference, val, alphas)
    lr_w, lr_a = 0.1, 0.3
    module = FirstOrderDARTSSearch(model, SGD, functools.partial(torch.optim.SGD, lr=lr_a), lr=lr_w, grad_clip=None)
    run_one_step(module, {"train": train, "val": val})
    for new, old, g in zip(model.weight_parameters(), weights, g_w):
        torch.testing.assert_close(new, old - lr_w * g, rtol=1e-5, atol=1e-6)
    for new, old, g in zip(model.arch_parameters(), alphas, g_a):
        torch.testing.assert_close(new, old - lr_a * g, rtol=1e-5, atol=1e-6)


@pytest.mark.end_to_end
def test_a_feddarts_run_moves_alpha_and_writes_its_genotype(method_run):
    run = method_run("feddarts")
    assert run.final["alpha_entropy_normalized"] < 1.0
    assert (run.run_dir / "genotype.json").is_file()
