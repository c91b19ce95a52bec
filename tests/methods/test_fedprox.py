"""FedProx: the proximal local step (known answers; mu=0 is FedAvg exactly), what it anchors, its mu, and the
size its run reports."""

from __future__ import annotations

import copy

import pytest
import torch

from federated_nas.algorithms.baselines.fedprox import ProximalTraining
from federated_nas.algorithms.core.local_module import SupervisedTraining
from federated_nas.errors import ConfigError
from federated_nas.runs import build
from federated_nas.search_space.network import count_parameters
from helpers import SGD, assert_same_states, grads, linear_model, run_one_step, tiny_batch


class MovedAfterSnapshot(ProximalTraining):
    """Takes w_global when the fit starts, then moves w away from it, as earlier local steps would."""

    def __init__(self, *args, shift: list[torch.Tensor], **kwargs):
        super().__init__(*args, **kwargs)
        self.shift = shift

    def on_train_start(self) -> None:
        super().on_train_start()
        with torch.no_grad():
            for w, delta in zip(self.model.parameters(), self.shift):
                w.add_(delta)


def linear_model_and_shift() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    model = linear_model()
    return model, [0.3 * torch.randn_like(w) for w in model.parameters()]


@pytest.mark.parametrize("mu", [0.5, 2.0])
def test_fedprox_step_adds_the_proximal_gradient(mu):
    """w <- w - lr (g_w(CE) + mu (w - w_global)), w_global being the weights the client received."""
    model, shift = linear_model_and_shift()
    w_global = [w.detach().clone() for w in model.parameters()]
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for w, delta in zip(moved.parameters(), shift):
            w.add_(delta)
    batch, lr = tiny_batch(3), 0.2
    g = grads(moved, batch, list(moved.parameters()))
    run_one_step(MovedAfterSnapshot(model, SGD, lr=lr, grad_clip=None, mu=mu, shift=shift), batch)
    for new, old, anchor, grad in zip(model.parameters(), moved.parameters(), w_global, g):
        torch.testing.assert_close(new, old - lr * (grad + mu * (old - anchor)))
        assert not torch.allclose(new, old - lr * grad)  # the proximal pull is visible at this mu


def test_fedprox_with_mu_zero_is_fedavg_exactly():
    model, shift = linear_model_and_shift()
    fedavg_model = copy.deepcopy(model)
    with torch.no_grad():
        for w, delta in zip(fedavg_model.parameters(), shift):
            w.add_(delta)
    batch = tiny_batch(3)
    run_one_step(MovedAfterSnapshot(model, SGD, lr=0.2, grad_clip=None, mu=0.0, shift=shift), batch)
    run_one_step(SupervisedTraining(fedavg_model, SGD, lr=0.2, grad_clip=None), batch)
    assert_same_states(model.state_dict(), fedavg_model.state_dict())


def test_fedprox_anchors_weights_not_batchnorm_statistics():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                                torch.nn.LazyLinear(3))
    model(torch.randn(2, 1, 8, 8))  # materialise the lazy layer
    module = ProximalTraining(model, SGD, lr=0.1, grad_clip=None, mu=1.0)
    run_one_step(module, tiny_batch(4))
    assert [w.shape for w in module.global_weights] == [w.shape for w in model.parameters()]


def test_fedprox_rejects_negative_mu(tiny_cfg):
    with pytest.raises(ConfigError, match="algorithm.mu"):
        build(tiny_cfg("search", ["algorithm=fedprox", "model=cnn", "algorithm.mu=-1"]).algorithm)


@pytest.mark.end_to_end
def test_a_fedprox_run_reports_the_size_of_its_network(method_run):
    run = method_run("fedprox")
    assert run.final["params"] == count_parameters(build(run.cfg.algorithm).model_factory(
        in_channels=1, num_classes=4))  # the synthetic data set: 1 channel, 4 classes
