"""FedDSNAS: hard Gumbel straight-through sampling, the child-only supernet step, its warm-up and BatchNorm
recalibration, and its run's final model (the most likely child)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from federated_nas.errors import ConfigError
from federated_nas.runs import run_search
from federated_nas.search_space.relaxations import HardGumbelRelaxation, SoftmaxRelaxation
from federated_nas.search_space.supernet import SearchNetwork
from helpers import run_one_step, tiny_batch


def test_straight_through_sample_is_one_hot_with_nonzero_alpha_gradient():
    torch.manual_seed(0)
    alpha = torch.randn(14, 8, requires_grad=True)
    weights = HardGumbelRelaxation(0.5)(alpha)
    assert torch.equal(weights.detach().sum(-1), torch.ones(14))
    assert set(weights.detach().unique().tolist()) == {0.0, 1.0}
    (grad,) = torch.autograd.grad((weights * torch.randn(14, 8)).sum(), alpha)
    assert (grad.abs().sum(-1) > 0).all()  # every edge's alpha learns from its one sampled op


def test_straight_through_gradient_known_answer():
    """dL/dalpha_j = dL/dZ_s * (delta_sj - y_j) / T, y = softmax((alpha + G) / T): DSNAS' credit assignment."""
    alpha = torch.tensor([[0.0, 1.0, -1.0]], requires_grad=True)
    relaxation, temperature = HardGumbelRelaxation(2.0), 2.0
    torch.manual_seed(3)
    uniform = torch.rand(1, 3).clamp_(1e-10, 1.0 - 1e-7)  # the noise the relaxation will draw
    perturbed = alpha.detach() - torch.log(-torch.log(uniform))
    torch.manual_seed(3)
    weights = relaxation(alpha)
    chosen = int(perturbed.argmax())
    expected_weights = torch.zeros(1, 3)
    expected_weights[0, chosen] = 1.0
    assert torch.equal(weights.detach(), expected_weights)
    credit = torch.tensor([[2.0, 3.0, 5.0]])  # dL/dZ for L = sum(credit * Z)
    (grad,) = torch.autograd.grad((weights * credit).sum(), alpha)
    y = torch.softmax(perturbed / temperature, -1)
    delta = torch.nn.functional.one_hot(torch.tensor([chosen]), 3).float()
    torch.testing.assert_close(grad, credit[0, chosen] * (delta - y) / temperature)


def test_tempered_sampling_draws_from_the_tempered_softmax_with_the_same_credit():
    """s = argmax(alpha / T + G), y = softmax(alpha / T + G): dL/dalpha = dL/dZ_s * (delta_s - y) / T."""
    alpha = torch.tensor([[0.0, 1.0, -1.0]], requires_grad=True)
    relaxation, temperature = HardGumbelRelaxation(0.5, tempered_sampling=True), 0.5
    torch.manual_seed(3)
    uniform = torch.rand(1, 3).clamp_(1e-10, 1.0 - 1e-7)
    perturbed = alpha.detach() / temperature - torch.log(-torch.log(uniform))
    torch.manual_seed(3)
    weights = relaxation(alpha)
    chosen = int(perturbed.argmax())
    assert int(weights.detach().argmax()) == chosen and float(weights.detach().sum()) == 1.0
    credit = torch.tensor([[2.0, 3.0, 5.0]])
    (grad,) = torch.autograd.grad((weights * credit).sum(), alpha)
    delta = torch.nn.functional.one_hot(torch.tensor([chosen]), 3).float()
    torch.testing.assert_close(grad, credit[0, chosen] * (delta - torch.softmax(perturbed, -1)) / temperature)
    # the sampling frequencies follow softmax(alpha / T); without tempering they follow softmax(alpha)
    torch.manual_seed(0)
    many = alpha.detach().expand(20000, 3)
    for tempered, expected in ((True, torch.softmax(alpha.detach()[0] / temperature, -1)),
                               (False, torch.softmax(alpha.detach()[0], -1))):
        draws = HardGumbelRelaxation(temperature, tempered_sampling=tempered)(many).detach().mean(0)
        torch.testing.assert_close(draws, expected, atol=0.015, rtol=0)


def test_evaluation_is_the_most_likely_child_without_noise():
    alpha = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 0.0]])
    relaxation = HardGumbelRelaxation(1.0).eval()
    assert torch.equal(relaxation(alpha), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))


def forward_flops(net: torch.nn.Module) -> int:
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(2, 3, 16, 16))
    return counter.get_total_flops()


def test_sampled_step_computes_about_the_child_only():
    torch.manual_seed(0)
    dense = SearchNetwork(3, 10, C=4, layers=3, relaxation=SoftmaxRelaxation())
    sampled = SearchNetwork(3, 10, C=4, layers=3, relaxation=HardGumbelRelaxation())
    sampled.load_state_dict(dense.state_dict())
    assert forward_flops(sampled) < 0.3 * forward_flops(dense)
    sampled.eval()
    child = sampled.most_likely_child()  # after the training steps: the same BatchNorm statistics
    assert forward_flops(sampled) == forward_flops(child)  # eval: the argmax child, computed as such
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(sampled(x), child(x), rtol=0, atol=0)


@pytest.mark.end_to_end
def test_a_feddsnas_runs_final_model_is_the_most_likely_child(method_run):
    result = method_run("feddsnas").final
    # evaluating the supernet computes exactly the most likely child
    assert result["global_test_acc"] == result["global_test_acc_discrete"]
    assert result["child_params"] < result["supernet_params"]


def test_bad_temperature_schedule_is_one_line(tiny_cfg):
    with pytest.raises(ConfigError, match="algorithm.temperature"):
        run_search(tiny_cfg("search", ["algorithm=feddsnas", "logger=none", "algorithm.temperature.shape=zigzag"]))


def test_warmup_rounds_keep_alpha_and_train_w():
    from federated_nas.algorithms.core.local_steps import MiLeNASSearch
    from federated_nas.algorithms.core.supernet_methods import warming_up

    assert [warming_up(0.25, r, 8) for r in range(4)] == [True, True, False, False]
    assert not warming_up(0.0, 0, 8)
    torch.manual_seed(0)
    model = SearchNetwork(1, 3, C=2, layers=1, relaxation=HardGumbelRelaxation())
    alphas = [a.detach().clone() for a in model.arch_parameters()]
    weights = [w.detach().clone() for w in model.weight_parameters()]
    module = MiLeNASSearch(model, torch.optim.SGD, torch.optim.Adam, lr=0.1, val_lambda=0.0, grad_clip=None)
    module.alpha_frozen = True
    run_one_step(module, {"train": tiny_batch(1), "val": tiny_batch(2)})
    assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), alphas))
    assert any(not torch.equal(w, b) for w, b in zip(model.weight_parameters(), weights))


def test_recalibration_under_the_argmax_child_gives_every_op_statistics():
    """The evaluated child alone would leave the other ops' statistics reset; they run on its node states."""
    from federated_nas.algorithms.core.supernet_methods import recalibrate_batch_norm

    torch.manual_seed(0)
    net = SearchNetwork(1, 10, C=4, layers=3, relaxation=HardGumbelRelaxation())
    recalibrate_batch_norm(net, [torch.randn(8, 1, 16, 16)])
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not torch.equal(norm.running_var, torch.ones_like(norm.running_var)) for norm in norms)
    assert net.training and not net.compute_every_op
    net.eval()
    child = net.most_likely_child()
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(net(x), child(x), rtol=0, atol=0)  # evaluation computes the child alone again


def test_bad_warmup_is_one_line(tiny_cfg):
    with pytest.raises(ConfigError, match="algorithm.warmup"):
        run_search(tiny_cfg("search", ["algorithm=feddsnas", "logger=none", "algorithm.warmup=1.5"]))
