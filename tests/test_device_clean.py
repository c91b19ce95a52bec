"""Every method's rounds run on a device that is not the CPU, with no tensor made on the CPU on the way.

Why: a tensor created on the CPU inside a step (``torch.zeros(n)`` beside CUDA tensors) fails only on a
GPU. Without one, the rounds run on ``off_cpu``'s emulated device (real data, and an error on any op that
mixes a CPU tensor with one on the device); with one, on CUDA as well. A round here is the server's own
(``FederatedRun._run_round``): the clients' local steps through Lightning on the reused worker model, update
clipping, aggregation, the schedules (pruning), evaluation, the discrete model and the round report; then
each client's personalization.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from federated_nas.algorithms.core.local_module import SupervisedTraining
from federated_nas.builders import build, build_data
from federated_nas.federation.backends import LocalBackend
from federated_nas.federation.evaluation import evaluate
from federated_nas.federation.personalization import adapt_client
from federated_nas.federation.server import FederatedRun, FederationSettings
from federated_nas.search_space.genotypes import derive_genotype
from federated_nas.search_space.supernet import SearchNetwork
from helpers import ALGORITHMS, DEVICES, run_one_step, tiny_batch
from off_cpu import DEVICE, off_cpu, running_on, trainer_on

FEDERATION = ["logger=none", "federation.num_clients=2", "federation.client_fraction=0.5", "federation.local_batches=1",
              "federation.update_clip_norm=10.0",
              "federation.eval_every=2", "federation.client_eval_every=2"]  # the last round (2) evaluates
DARTS = ["search_space.layers=3", "search_space.steps=2", "search_space.multiplier=2"]  # a normal and 2 reduce cells
# the fixed-network methods read the model group; the supernet methods ignore it
SMALL_CNN = ["model=cnn", "model.channels=[2,4]", "model.hidden=8"]
PERSONALIZATION_STEPS = ("adapt_steps", "new_client_steps", "finetune_steps")  # one step shows a path is clean
TARGETS = [name for name in DEVICES if name != "cpu"]  # off the CPU: emulated, and CUDA where present


def unclean_scale(x: torch.Tensor) -> torch.Tensor:
    return x * torch.ones(x.shape)  # the mistake the test exists for: a new tensor with no device


class UncleanTraining(SupervisedTraining):
    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(unclean_scale(self.model(x)), y)


@pytest.mark.parametrize("target", TARGETS)
def test_a_cpu_tensor_made_inside_a_step_is_caught(target):
    """The check itself: a tensor made without a device fails, in a forward, in a backward and inside a
    Lightning fit, while the same code given the device runs."""
    context, device = running_on(target)

    class UncleanBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * torch.ones(grad.shape)

    with context:
        x = torch.randn(3, 4, device=device, requires_grad=True)
        assert x.device == device
        (x * torch.ones(x.shape, device=x.device)).sum().backward()  # clean: runs
        assert float(x.grad.sum()) == 12.0 and x.grad.device == device
        with pytest.raises(RuntimeError, match="same device"):
            unclean_scale(x)
        with pytest.raises(RuntimeError, match="same device"):
            UncleanBackward.apply(x).sum().backward()
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        with pytest.raises(RuntimeError, match="same device"):
            run_one_step(UncleanTraining(model, functools.partial(torch.optim.SGD), lr=0.1, grad_clip=None),
                         tiny_batch(0), device)


def test_the_emulated_device_computes_what_the_cpu_computes():
    """Real data, not shapes: a supernet's gradients on ``off_cpu`` are the CPU's (float64: its convolutions
    take the other devices' path, PyTorch's own backward, where the CPU takes ``depthwise``'s), and a CPU
    state loads into the moved model (``load_state_dict`` skips every copy into a tensor that says it is meta)."""
    torch.manual_seed(0)
    net = SearchNetwork(1, 3, C=2, layers=3).double()
    x, y = tiny_batch(0)
    x = x.double()
    expected = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    with off_cpu():
        moved = copy.deepcopy(net).to(DEVICE)
        got = torch.autograd.grad(F.cross_entropy(moved(x.to(DEVICE)), y.to(DEVICE)), list(moved.parameters()))
        got = [g.cpu() for g in got]
        with torch.no_grad():
            moved.alpha_normal.add_(1.0)
        moved.load_state_dict(net.state_dict())
        assert torch.equal(moved.alpha_normal.cpu(), net.alpha_normal)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_what_the_emulated_device_builds_from_python_data_keeps_its_values():
    """``torch.tensor``, ``new_tensor``, list indices and ``tolist`` on ``off_cpu`` (PyTorch keeps no data on meta)."""
    with off_cpu():
        t = torch.tensor([1.0, 2.0, 3.0], device=DEVICE)
        t[[0, 1]] = 7.0
        assert t.device == DEVICE and t[[2, 0]].tolist() == [3.0, 7.0] and t.new_tensor([5]).tolist() == [5.0]


def two_rounds_on(target: str, cfg, run_dir: Path) -> None:
    """The run's rounds and a client's personalization on ``target``, with the method, data and settings of ``cfg``."""
    context, device = running_on(target)
    for key in PERSONALIZATION_STEPS:
        if key in cfg.algorithm:
            cfg.algorithm[key] = 1
    method, data = build(cfg.algorithm), build_data(cfg)
    settings = FederationSettings(**{k: v for k, v in cfg.federation.items()
                                     if k in FederationSettings.__annotations__})  # num_clients, split: the data's
    with context:
        backend = LocalBackend(functools.partial(trainer_on, device))  # its client fits on the device
        run = FederatedRun(method, data, backend, settings, run_dir, int(cfg.seed), str(device))
        for round_idx in range(settings.rounds):
            metrics = run._run_round(round_idx)
        assert metrics["responders"] == 1 and 0.0 <= metrics["global_test_acc"] <= 1.0
        assert all(t.device == device for t in run.model.state_dict().values())
        client = data.clients[min(run.personal, default=0)]  # one that kept a personal state, if any did
        # with the client's own kept state, and, where a method keeps one, without (a client never sampled)
        for personal in (run.personal, None) if run.personal else (None,):
            adapted = adapt_client(method, run.model, client, settings.batch_size, int(cfg.seed), settings.rounds,
                                   personal)
            if adapted is not None:
                assert 0.0 <= evaluate(adapted, client.test, settings.eval_batch_size, device)[0] <= 1.0


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_two_rounds_and_personalization_run_on_the_device(tiny_cfg, tmp_path, algorithm, target):
    two_rounds_on(target, tiny_cfg("search", [f"algorithm={algorithm}", *FEDERATION, *DARTS, *SMALL_CNN]), tmp_path)


@pytest.mark.parametrize("target", TARGETS)
def test_the_train_stage_network_runs_on_the_device(tiny_cfg, tmp_path, target):
    """The second stage's network (a genotype's, trained by FedAvg) on the device too."""
    genotype = derive_genotype(torch.randn(5, 8), torch.randn(5, 8), steps=2, multiplier=2).save(tmp_path / "g.json")
    two_rounds_on(target, tiny_cfg("search", ["algorithm=fedavg", *FEDERATION, *DARTS, "model=genotype",
                                              f"model.genotype={genotype}"]), tmp_path)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("algorithm", ["fednas", "fedmetanas", "feddsnas"])
def test_the_mlp_space_runs_on_the_device(tiny_cfg, tmp_path, algorithm, target):
    """The vector data's search space: dense, tempered and one-hot (skipped ops) relaxations."""
    two_rounds_on(target, tiny_cfg("search", [f"algorithm={algorithm}", *FEDERATION, "dataset=synthetic_vector"]),
                  tmp_path)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("algorithm", ["fednas", "fedmetanas", "fedrlnas"])
def test_the_benchmark_space_runs_on_the_device(tiny_cfg, tmp_path, algorithm, target):
    """The tabular benchmark's one-cell space (tied cells, 4 ops): dense, pruned and sampled-child methods."""
    two_rounds_on(target, tiny_cfg("search", [f"algorithm={algorithm}", *FEDERATION, "search_space=bench",
                                              "search_space.C=2", "search_space.layers=3"]), tmp_path)
