"""FedNAS: MiLeNAS' mixed-level local step (known answers on each device), its gradient clipping, the collapse
diagnostics it reports, and its personalization (MiLeNAS steps with plain SGD on the client's own data)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from federated_nas.algorithms.core.local_steps import MiLeNASSearch
from federated_nas.algorithms.nas.fednas import FedNAS
from federated_nas.errors import ConfigError
from federated_nas.runs import build
from federated_nas.search_space.supernet import SearchNetwork
from helpers import (SGD, adapt_task, assert_same_states, client_of, grads, run_one_step, run_steps, tiny_batch,
                     tiny_split)


@pytest.mark.parametrize("val_lambda", [0.0, 0.5, 2.0])
def test_milenas_mixed_level_step(val_lambda, device):
    """w <- w - lr_w g_w(L_tr);  alpha <- alpha - lr_a (g_a(L_tr) + lambda g_a(L_val)), on each device."""
    torch.manual_seed(0)
    model = SearchNetwork(1, 3, C=2, layers=1)
    train, val = tiny_batch(1), tiny_batch(2)
    reference = copy.deepcopy(model).to(device)
    weights, alphas = reference.weight_parameters(), reference.arch_parameters()
    g_w = grads(reference, train, weights)
    g_a_tr = grads(reference, train, alphas)
    g_a_val = grads(reference, val, alphas)
    lr_w, lr_a = 0.1, 0.3
    module = MiLeNASSearch(model, SGD, functools.partial(torch.optim.SGD, lr=lr_a), lr=lr_w,
                           val_lambda=val_lambda, grad_clip=None)
    run_one_step(module, {"train": train, "val": val}, device)
    for new, old, g in zip(model.weight_parameters(), weights, g_w):
        torch.testing.assert_close(new.cpu(), (old - lr_w * g).cpu(), rtol=1e-5, atol=1e-6)
    for new, old, g_tr, g_val in zip(model.arch_parameters(), alphas, g_a_tr, g_a_val):
        torch.testing.assert_close(new.cpu(), (old - lr_a * (g_tr + val_lambda * g_val)).cpu(), rtol=1e-5, atol=1e-6)


def test_gradient_clipping_acts_on_w_not_alpha():
    torch.manual_seed(0)
    model = SearchNetwork(1, 3, C=2, layers=1)
    train, val = tiny_batch(1), tiny_batch(2)
    reference = copy.deepcopy(model)
    alphas = reference.arch_parameters()
    g_a = [a + b for a, b in zip(grads(reference, train, alphas), grads(reference, val, alphas))]
    clip, lr_w, lr_a = 1e-3, 1.0, 0.3
    module = MiLeNASSearch(model, SGD, functools.partial(torch.optim.SGD, lr=lr_a), lr=lr_w,
                           val_lambda=1.0, grad_clip=clip)
    run_one_step(module, {"train": train, "val": val})
    step = torch.cat([(n - o).detach().flatten() for n, o in zip(model.weight_parameters(), reference.weight_parameters())])
    assert float(step.norm()) == pytest.approx(lr_w * clip, rel=1e-3)
    for new, old, g in zip(model.arch_parameters(), alphas, g_a):
        torch.testing.assert_close(new, old - lr_a * g, rtol=1e-5, atol=1e-6)


def test_fednas_reports_collapse_diagnostics():
    torch.manual_seed(0)
    algorithm = FedNAS(functools.partial(SearchNetwork, C=2, layers=2), SGD, SGD)
    model = SearchNetwork(1, 3, C=2, layers=2)
    report = algorithm.round_report(model)
    assert report["alpha_entropy"] == pytest.approx(torch.log(torch.tensor(8.0)).item(), rel=1e-3)
    assert 0 <= report["skip_connect_count"] <= 16
    assert report["derived_params"] < sum(p.numel() for p in model.parameters())


# --- personalization ------------------------------------------------------------------------------

@pytest.mark.parametrize("val_lambda", [0.0, 1.5])
def test_fednas_adapt_step_is_the_milenas_update_with_sgd(val_lambda):
    """One step on the client's whole train and val splits (one batch each):
    w <- w - lr_w g_w(L_tr);  alpha <- alpha - lr_a (g_a(L_tr) + lambda g_a(L_val))."""
    torch.manual_seed(0)
    model = SearchNetwork(1, 3, C=2, layers=1)
    train, val = tiny_split(1), tiny_split(2)
    lr_w, lr_a = 0.1, 0.3
    algorithm = FedNAS(SearchNetwork, SGD, SGD, val_lambda=val_lambda, grad_clip=None, adapt_steps=1,
                       adapt_lr_w=lr_w, adapt_lr_alpha=lr_a)
    reference = copy.deepcopy(model)
    weights, alphas = reference.weight_parameters(), reference.arch_parameters()
    g_w = grads(reference, train.tensors, weights)
    g_a_tr, g_a_val = grads(reference, train.tensors, alphas), grads(reference, val.tensors, alphas)
    original = copy.deepcopy(model.state_dict())
    adapted = algorithm.adapt(model, adapt_task(client_of(train, val), len(train), 3))
    for new, old, g in zip(adapted.weight_parameters(), weights, g_w):
        torch.testing.assert_close(new, old - lr_w * g, rtol=1e-4, atol=1e-6)
    for new, old, g_tr, g_val in zip(adapted.arch_parameters(), alphas, g_a_tr, g_a_val):
        torch.testing.assert_close(new, old - lr_a * (g_tr + val_lambda * g_val), rtol=1e-4, atol=1e-6)
    assert_same_states(model.state_dict(), original)
    assert isinstance(adapted, SearchNetwork) and not adapted.training


def test_fednas_adapt_cycles_its_batches_and_zero_steps_is_a_copy():
    torch.manual_seed(0)
    model = SearchNetwork(1, 3, C=2, layers=1)
    client = client_of(tiny_split(1), tiny_split(2))  # 6 samples each: one batch pair of 6
    zero, one, three = (FedNAS(SearchNetwork, SGD, SGD, adapt_steps=steps) for steps in (0, 1, 3))
    assert_same_states(zero.adapt(model, adapt_task(client, 6, 0)).state_dict(), model.state_dict())
    stepwise = model
    for _ in range(3):  # plain SGD keeps no state: three 1-step adaptations are one 3-step adaptation
        stepwise = one.adapt(stepwise, adapt_task(client, 6, 0))
    for new, expected in zip(three.adapt(model, adapt_task(client, 6, 0)).parameters(), stepwise.parameters()):
        torch.testing.assert_close(new, expected)
    assert any(not torch.equal(new, old) for new, old in zip(stepwise.arch_parameters(), model.arch_parameters()))


def test_bad_adaptation_steps_are_one_clear_error(tiny_cfg):
    with pytest.raises(ConfigError, match="^algorithm.adapt_steps"):
        build(tiny_cfg("search", ["algorithm=fednas", "algorithm.adapt_steps=-1"]).algorithm)


def test_steps_outside_a_fit_equal_the_same_steps_through_a_trainer():
    """LocalModule.run_steps (personalization's way) gives what a Lightning fit of the same module gives: the
    same optimizers, backward and clipping; here with momentum (state across steps) and a clip that bites."""
    from federated_nas.algorithms.core.local_steps import MiLeNASSearch

    torch.manual_seed(0)
    model = SearchNetwork(1, 3, C=2, layers=1)
    batches = [{"train": tiny_batch(seed), "val": tiny_batch(seed + 10)} for seed in range(3)]
    momentum = functools.partial(torch.optim.SGD, momentum=0.9)
    fitted, outside = copy.deepcopy(model), copy.deepcopy(model)
    run_steps(MiLeNASSearch(fitted, momentum, functools.partial(torch.optim.SGD, lr=0.2), 0.1, 1.0, 0.01), batches)
    MiLeNASSearch(outside, momentum, functools.partial(torch.optim.SGD, lr=0.2), 0.1, 1.0, 0.01).run_steps(batches)
    assert_same_states(outside.state_dict(), fitted.state_dict())
    assert not torch.equal(outside.alpha_reduce, model.alpha_reduce)  # one layer: a reduction cell alone
