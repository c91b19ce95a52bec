"""Fixed-network baselines: the hand-designed networks, FedProx's local step, tiny end-to-end runs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from federated_nas.algorithms.fedavg import SupervisedTraining
from federated_nas.algorithms.fedprox import ProximalTraining
from federated_nas.errors import ConfigError
from federated_nas.models import mobilenet_v3, resnet18
from federated_nas.runs import build, run_search
from federated_nas.search_space.network import count_parameters
from conftest import assert_same_states
from test_update_rules import SGD, grads, run_one_step, tiny_batch

# (model group option, its overrides): the published size at 10 classes, in millions of parameters
NETWORKS = {
    "cnn": ([], 1.663),  # McMahan et al.'s 1,663,370 at 28x28
    "resnet18": ([], 11.17),
    "mobilenet_v3": ([], 1.53),
    "mobilenet_v3-large": (["model.size=large"], 4.21),
    "densenet": ([], 6.96),  # DenseNet-121
    "densenet-small": (["model.growth_rate=12", "model.block_config=[4,4,4]"], 0.1226),
}
SIZE_TOLERANCE = 0.01  # relative: only the stem's input channels differ between 1- and 3-channel input


@pytest.mark.parametrize("network", NETWORKS)
def test_fixed_networks_build_from_their_config(tiny_cfg, network):
    overrides, millions = NETWORKS[network]
    cfg = tiny_cfg("search", ["algorithm=fedavg", f"model={network.split('-')[0]}", "logger=none", *overrides])
    algorithm = build(cfg.algorithm)
    for in_channels, image_size in ((1, 28), (3, 32)):
        model = algorithm.model_factory(in_channels=in_channels, num_classes=10).eval()
        with torch.no_grad():
            logits = model(torch.randn(2, in_channels, image_size, image_size))
        assert logits.shape == (2, 10)
        assert count_parameters(model) == pytest.approx(millions * 1e6, rel=SIZE_TOLERANCE)


def test_networks_keep_resolution_at_the_stem():
    stem = resnet18(3, 10).conv1
    assert (stem.kernel_size, stem.stride, stem.in_channels) == ((3, 3), (1, 1), 3)
    assert isinstance(resnet18(1, 10).maxpool, torch.nn.Identity)
    assert mobilenet_v3(1, 10).features[0][0].stride == (1, 1)
    with pytest.raises(ConfigError, match="model.size"):
        mobilenet_v3(1, 10, size="medium")


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
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
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


@pytest.mark.parametrize("overrides", [["algorithm=fedprox", "model=cnn"], ["algorithm=fedavg", "model=resnet18"]])
def test_two_round_fixed_network_runs(tiny_cfg, overrides):
    final = run_search(tiny_cfg("search", [*overrides, "logger=none"]))
    assert 0.0 <= final["global_test_acc"] <= 1.0
    assert final["params"] == count_parameters(build(tiny_cfg("search", overrides).algorithm).model_factory(
        in_channels=1, num_classes=4))  # the synthetic data set: 1 channel, 4 classes


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox"])
def test_fixed_network_algorithm_without_model_is_one_clear_error(tiny_cfg, algorithm):
    cfg = tiny_cfg("search", [f"algorithm={algorithm}", "logger=none"])
    with pytest.raises(ConfigError, match=rf"^algorithm={algorithm} needs a fixed network: model=cnn\|resnet18"):
        run_search(cfg)
    assert not Path(cfg.paths.output_dir).exists()


def test_fedprox_rejects_negative_mu(tiny_cfg):
    with pytest.raises(ConfigError, match="algorithm.mu"):
        build(tiny_cfg("search", ["algorithm=fedprox", "model=cnn", "algorithm.mu=-1"]).algorithm)
