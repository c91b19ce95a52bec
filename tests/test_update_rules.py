"""Known-answer tests of the local update rules on a tiny supernet."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from federated_nas.algorithms.fedavg import SupervisedTraining
from federated_nas.algorithms.fednas import FedNAS
from federated_nas.algorithms.local_steps import MiLeNASSearch
from federated_nas.algorithms.base import cosine_lr
from federated_nas.federation.backends import no_srun_hint
from federated_nas.search_space.supernet import SearchNetwork
from off_cpu import trainer_on

SGD = functools.partial(torch.optim.SGD)


class OneBatch:
    """A loader of exactly one batch (a plain list would be read as a list of loaders)."""

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        yield self.batch

    def __len__(self):
        return 1


def run_one_step(module, batch, device: torch.device | str = "cpu"):
    """One local step of ``module`` through a Trainer on ``device`` (the model is back on the CPU after it)."""
    trainer = trainer_on(device, max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0)
    with no_srun_hint():  # as LocalBackend's client fits: no SLURM hint where srun is installed
        trainer.fit(module, train_dataloaders=OneBatch(batch))


def tiny_batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g)


def grads(model, batch, params):
    x, y = (t.to(params[0].device) for t in batch)
    found = torch.autograd.grad(F.cross_entropy(model(x), y), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(found, params)]  # unused: zero gradient


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


def test_fedavg_local_sgd_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    batch = tiny_batch(3)
    reference = copy.deepcopy(model)
    g = grads(reference, batch, list(reference.parameters()))
    run_one_step(SupervisedTraining(model, SGD, lr=0.2, grad_clip=None), batch)
    for new, old, grad in zip(model.parameters(), reference.parameters(), g):
        torch.testing.assert_close(new, old - 0.2 * grad)


def test_cosine_schedule_over_rounds():
    assert cosine_lr(0.025, 0.001, 0, 50) == pytest.approx(0.025)
    assert cosine_lr(0.025, 0.001, 25, 50) == pytest.approx(0.013)
    assert cosine_lr(0.025, 0.001, 50, 50) == pytest.approx(0.001)


def test_fednas_reports_collapse_diagnostics():
    torch.manual_seed(0)
    algorithm = FedNAS(functools.partial(SearchNetwork, C=2, layers=2), SGD, SGD)
    model = SearchNetwork(1, 3, C=2, layers=2)
    report = algorithm.round_report(model)
    assert report["alpha_entropy"] == pytest.approx(torch.log(torch.tensor(8.0)).item(), rel=1e-3)
    assert 0 <= report["skip_connect_count"] <= 16
    assert report["derived_params"] < sum(p.numel() for p in model.parameters())
