"""Ditto: FedAvg's step on the global model beside the personal step on each client's own model (known answers),
the personal model as the client's personalization, kept per client through a crash and resume."""

from __future__ import annotations

import copy

import pytest
import torch

from federated_nas.algorithms.baselines.ditto import Ditto, DittoTraining
from federated_nas.algorithms.core.local_module import SupervisedTraining
from federated_nas.errors import ConfigError
from federated_nas.federation.server import sample_clients
from federated_nas.runs import build, run_search
from helpers import (SGD, SMALL_CNN, adapt_task, assert_same_checkpoints, assert_same_states, client_with,
                     crash_then_resume, factory_of, grads, headed_model, run_steps, sgd_by_hand, shifted, tiny_batch)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_ditto_personal_step_and_fedavg_global_step(lam):
    """v <- v - lr_p (g(v) + lam (v - w_global)); w takes FedAvg's step exactly."""
    model = headed_model()
    fedavg_model, w_global = copy.deepcopy(model), [w.detach().clone() for w in model.parameters()]
    personal = shifted(model)
    v = copy.deepcopy(model)
    v.load_state_dict(personal)
    batch, lr, lr_p = tiny_batch(3), 0.2, 0.3
    g_v = grads(v, batch, list(v.parameters()))
    module = DittoTraining(model, SGD, lr=lr, grad_clip=None, lam=lam, personal_lr=lr_p, personal=personal)
    run_steps(module, [batch])
    run_steps(SupervisedTraining(fedavg_model, SGD, lr=lr, grad_clip=None), [batch])
    assert_same_states(model.state_dict(), fedavg_model.state_dict())
    assert module.personal.keys() == model.state_dict().keys()
    for (name, v_old), g, anchor in zip(v.named_parameters(), g_v, w_global):
        torch.testing.assert_close(module.personal[name], v_old - lr_p * (g + lam * (v_old - anchor)))


def test_ditto_personal_model_starts_from_the_received_model():
    model = headed_model()
    reference, batch = copy.deepcopy(model), tiny_batch(4)
    module = DittoTraining(model, SGD, lr=0.2, grad_clip=None, lam=1.0, personal_lr=0.3)
    run_steps(module, [batch])
    sgd_by_hand(reference, batch, list(reference.parameters()), 0.3)  # v = w_global at the step: no pull
    assert_same_states(module.personal, reference.state_dict())


def test_ditto_adapt_is_the_clients_personal_model():
    model = headed_model()
    algorithm = Ditto(factory_of(model), SGD)
    personal = shifted(model)
    assert_same_states(algorithm.adapt(model, adapt_task(client_with(6), 4, 0, personal)).state_dict(), personal)
    fallback = algorithm.adapt(model, adapt_task(client_with(6), 4, 0))
    assert_same_states(fallback.state_dict(), model.state_dict())
    assert not fallback.training and fallback is not model


@pytest.mark.end_to_end
def test_a_ditto_run_keeps_each_clients_whole_personal_model(method_run):
    run = method_run("ditto")
    checkpoint = run.checkpoint
    assert {name for state in checkpoint["personal"].values() for name in state} == set(checkpoint["model"])


@pytest.mark.end_to_end
def test_ditto_personal_models_survive_a_crash_and_resume(tiny_cfg, monkeypatch):
    overrides = ["algorithm=ditto", *SMALL_CNN, "logger=none", "federation.rounds=3", "federation.client_fraction=0.67"]
    straight = run_search(tiny_cfg("search", overrides, run="straight"))
    resumed = crash_then_resume(tiny_cfg, overrides, monkeypatch)
    expected, got = assert_same_checkpoints(straight, resumed)
    taking_part = {str(k) for round_idx in range(3) for k in sample_clients(0, round_idx, 3, 0.67)}
    assert got["personal"].keys() == expected["personal"].keys() == taking_part


@pytest.mark.parametrize("override,key", [("algorithm.lam=-1", "algorithm.lam"),
                                          ("algorithm.personal_lr=0", "algorithm.personal_lr")])
def test_bad_ditto_settings_are_one_clear_error(tiny_cfg, override, key):
    with pytest.raises(ConfigError, match=f"^{key} must be"):
        build(tiny_cfg("search", ["algorithm=ditto", "model=cnn", override]).algorithm)
