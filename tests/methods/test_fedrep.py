"""FedRep: each client's local steps train its personal head, then the shared body (known answers); the
personalization is the global body with the client's own head, or a head fitted to it for a new client."""

from __future__ import annotations

import copy

import pytest
import torch

from federated_nas.algorithms.baselines.fedrep import FedRep, FedRepTraining
from federated_nas.errors import ConfigError
from federated_nas.models.heads import body_parameters, head_parameter_names, head_parameters
from federated_nas.runs import build
from helpers import (SGD, adapt_task, assert_same_states, client_with, factory_of, headed_model, initial_fixed_network,
                     run_steps, sgd_by_hand, shifted, tiny_batch)


def test_fedrep_trains_the_personal_head_then_the_body():
    """Head step on batch 1 (body frozen), body step on batch 2 (head frozen); the upload keeps the received head."""
    model = headed_model()
    received = copy.deepcopy(model.state_dict())
    personal = {name: value for name, value in shifted(model).items() if name.startswith("3.")}
    reference = copy.deepcopy(model)
    reference.load_state_dict(personal, strict=False)
    first, second, lr = tiny_batch(5), tiny_batch(6), 0.2
    sgd_by_hand(reference, first, head_parameters(reference), lr)
    head_after_head_step = {name: reference.state_dict()[name].clone() for name in personal}
    sgd_by_hand(reference, second, body_parameters(reference), lr)
    module = FedRepTraining(model, SGD, lr=lr, grad_clip=None, head_steps=1, personal=personal)
    run_steps(module, [first, second])
    assert_same_states(module.personal, head_after_head_step)  # the body step left the head alone
    for name, value in model.state_dict().items():
        expected = received[name] if name.startswith("3.") else reference.state_dict()[name]
        torch.testing.assert_close(value, expected, msg=name)


def test_fedrep_body_is_frozen_during_head_steps():
    model = headed_model()
    received, reference, batch = copy.deepcopy(model.state_dict()), copy.deepcopy(model), tiny_batch(7)
    module = FedRepTraining(model, SGD, lr=0.2, grad_clip=None, head_steps=2)
    run_steps(module, [batch])
    sgd_by_hand(reference, batch, head_parameters(reference), 0.2)
    assert_same_states(model.state_dict(), received)
    assert_same_states(module.personal, {k: v for k, v in reference.state_dict().items() if k.startswith("3.")})


def test_fedrep_adapt_is_the_global_body_with_the_clients_head():
    model = headed_model()
    algorithm = FedRep(factory_of(model), SGD, head_steps=3)
    head = {name: value for name, value in shifted(model).items() if name.startswith("3.")}
    adapted = algorithm.adapt(model, adapt_task(client_with(10), 4, 0, head))
    assert_same_states(adapted.state_dict(), {**model.state_dict(), **head})
    new_client = algorithm.adapt(model, adapt_task(client_with(10), 4, 0))  # never trained: fits a head to the body
    for name, value in new_client.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]) == (not name.startswith("3.")), name


@pytest.mark.end_to_end
def test_a_fedrep_run_keeps_the_heads_per_client_and_sends_back_the_head_it_received(method_run):
    run = method_run("fedrep")
    checkpoint, initial = run.checkpoint, initial_fixed_network(run.cfg)
    head = head_parameter_names(initial)
    assert {name for state in checkpoint["personal"].values() for name in state} == set(head)
    assert_same_states({k: checkpoint["model"][k] for k in head}, {k: initial.state_dict()[k] for k in head})


def test_bad_head_steps_are_one_clear_error(tiny_cfg):
    with pytest.raises(ConfigError, match="^algorithm.head_steps must be"):
        build(tiny_cfg("search", ["algorithm=fedrep", "model=cnn", "algorithm.head_steps=-1"]).algorithm)
