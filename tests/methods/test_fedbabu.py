"""FedBABU: only the body is trained and averaged, the head keeps its random initialisation (a known-answer
step, even under momentum and weight decay); personalization fine-tunes the whole model."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from federated_nas.algorithms.baselines.fedbabu import FedBABU
from federated_nas.errors import ConfigError
from federated_nas.models.heads import body_parameters, head_parameter_names
from federated_nas.runs import build
from helpers import (SGD, assert_same_states, factory_of, first_of_one_round, headed_model, initial_fixed_network,
                     run_steps, sgd_by_hand, tiny_batch)


def test_fedbabu_body_step_is_sgd_and_the_head_never_moves():
    model = headed_model()
    reference, batch = copy.deepcopy(model), tiny_batch(8)
    run_steps(FedBABU(factory_of(model), SGD, lr=0.2).local_module(model, first_of_one_round(8)), [batch])
    sgd_by_hand(reference, batch, body_parameters(reference), 0.2)
    assert_same_states(model[3].state_dict(), reference[3].state_dict())
    torch.testing.assert_close(model.state_dict(), reference.state_dict())

    heavy = functools.partial(torch.optim.SGD, momentum=0.9, weight_decay=0.1)  # nothing may leak into the head
    head = copy.deepcopy(model[3].state_dict())
    run_steps(FedBABU(factory_of(model), heavy, lr=0.2).local_module(model, first_of_one_round(8)),
              [tiny_batch(9), tiny_batch(10), tiny_batch(11)])
    assert_same_states(model[3].state_dict(), head)
    assert not torch.equal(model[1].weight, reference[1].weight)


@pytest.mark.end_to_end
def test_a_fedbabu_run_keeps_nothing_per_client_and_its_head_as_initialised(method_run):
    run = method_run("fedbabu")
    checkpoint, initial = run.checkpoint, initial_fixed_network(run.cfg)
    head = head_parameter_names(initial)
    assert {name for state in checkpoint["personal"].values() for name in state} == set()
    assert_same_states({k: checkpoint["model"][k] for k in head}, {k: initial.state_dict()[k] for k in head})


@pytest.mark.parametrize("override,key", [("algorithm.finetune_steps=-2", "algorithm.finetune_steps"),
                                          ("algorithm.finetune_lr=0", "algorithm.finetune_lr")])
def test_bad_fedbabu_settings_are_one_clear_error(tiny_cfg, override, key):
    with pytest.raises(ConfigError, match=f"^{key} must be"):
        build(tiny_cfg("search", ["algorithm=fedbabu", "model=cnn", override]).algorithm)
