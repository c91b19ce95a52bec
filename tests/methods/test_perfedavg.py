"""Per-FedAvg (first order): the meta step (known answers) and the accuracy each client reports before and after
its one personalization step."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from federated_nas.algorithms.baselines.perfedavg import FirstOrderMetaStep
from federated_nas.errors import ConfigError
from federated_nas.runs import build
from helpers import SGD, grads, linear_model, run_one_step, tiny_batch


@pytest.mark.parametrize("alpha,beta", [(0.1, 0.2), (0.5, 0.05)])
def test_perfedavg_first_order_step(alpha, beta):
    """temp = w - alpha grad L(w; D1);  w <- w - beta grad L(temp; D2)."""
    model = linear_model()
    d1, d2 = tiny_batch(1), tiny_batch(2)
    temp = copy.deepcopy(model)
    inner_grad = grads(temp, d1, list(temp.parameters()))
    with torch.no_grad():
        for param, grad in zip(temp.parameters(), inner_grad):
            param.sub_(alpha * grad)
    meta_grad = grads(temp, d2, list(temp.parameters()))
    start = [p.detach().clone() for p in model.parameters()]
    run_one_step(FirstOrderMetaStep(model, SGD, lr=beta, inner_lr=alpha, grad_clip=None), {"inner": d1, "outer": d2})
    for new, old, grad in zip(model.parameters(), start, meta_grad):
        torch.testing.assert_close(new, old - beta * grad, rtol=1e-5, atol=1e-6)


@pytest.mark.end_to_end
def test_a_perfedavg_run_saves_each_clients_accuracy_before_and_after_personalization(method_run):
    run = method_run("perfedavg")
    saved = json.loads((run.run_dir / "personalized" / "client_accuracy.json").read_text())
    assert saved["clients"] == [0, 1, 2] and len(saved["before"]) == len(saved["after"]) == 3
    assert run.final["personalized_acc_after_mean"] == pytest.approx(sum(saved["after"]) / 3)


def test_bad_inner_lr_is_one_clear_error(tiny_cfg):
    with pytest.raises(ConfigError, match="^algorithm.inner_lr"):
        build(tiny_cfg("search", ["algorithm=perfedavg", "model=cnn", "algorithm.inner_lr=0"]).algorithm)
