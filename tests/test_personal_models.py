"""Personalized methods (Ditto, FedRep, FedBABU): known-answer local steps, fine-tuning, per-client state."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.environments import LightningEnvironment
from torch import nn
from torch.utils.data import TensorDataset

from federated_nas.algorithms.base import ClientTask, RoundPlan
from federated_nas.algorithms.ditto import Ditto, DittoTraining
from federated_nas.algorithms.fedavg import SupervisedTraining
from federated_nas.algorithms.fedbabu import FedBABU
from federated_nas.algorithms.fedrep import FedRep, FedRepTraining
from federated_nas.algorithms.personal import cycled, finetune
from federated_nas.data.federated_data import ClientData
from federated_nas.data.loaders import batch_loader
from federated_nas.errors import ConfigError
from federated_nas.federation.backends import no_srun_hint
from federated_nas.federation.checkpoint import load_latest_checkpoint
from federated_nas.federation.server import sample_clients
from federated_nas.models import densenet, mobilenet_v3, resnet18, small_cnn
from federated_nas.models.heads import body_parameters, head_module_name, head_parameter_names, head_parameters
from federated_nas.runs import build, run_search
from federated_nas.search_space.genotypes import derive_genotype
from federated_nas.search_space.network import GenotypeNetwork
from conftest import assert_same_checkpoints, assert_same_states, crash_then_resume
from test_update_rules import SGD, grads, tiny_batch

SMALL_CNN = ["model=cnn", "model.channels=[4,8]", "model.hidden=16", "logger=none"]


class Batches:
    """A loader of the given batches, in order."""

    def __init__(self, batches):
        self.batches = list(batches)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def run_steps(module, batches) -> None:
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=len(batches), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, plugins=[LightningEnvironment()])
    with no_srun_hint():  # as LocalBackend's client fits: no SLURM hint where srun is installed
        trainer.fit(module, train_dataloaders=Batches(batches))


def headed_model() -> nn.Sequential:
    """Body: Flatten + Linear(64, 5) + ReLU; head: the last Linear, named "3"."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 3))


def shifted(model: nn.Module, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """The model's state moved away from it: a personal state that differs from the received model."""
    return {name: value + scale * torch.randn_like(value) for name, value in model.state_dict().items()}


def sgd_by_hand(model: nn.Module, batch, params: list[nn.Parameter], lr: float) -> None:
    found = grads(model, batch, params)
    with torch.no_grad():
        for param, grad in zip(params, found):
            param.sub_(lr * grad)


def first_of_one_round(samples: int) -> ClientTask:
    """A client's task in round 0 of 1 (the lr schedule's start), with nothing kept from before."""
    return ClientTask(client_with(samples), RoundPlan(0, 1, 0, 1, None, 4), 0)


def client_with(samples: int, seed: int = 0) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    train = TensorDataset(torch.randn(samples, 1, 8, 8, generator=g), torch.randint(0, 3, (samples,), generator=g))
    empty = TensorDataset(train.tensors[0][:0], train.tensors[1][:0])
    return ClientData(0, train, empty, empty)


def factory_of(model: nn.Module):
    return lambda **_: copy.deepcopy(model)


@pytest.mark.parametrize("build_model,head", [
    (lambda: resnet18(1, 4), "fc"),
    (lambda: mobilenet_v3(1, 4), "classifier.3"),
    (lambda: densenet(1, 4, growth_rate=4, block_config=[1, 1], num_init_features=8), "classifier"),
    (lambda: small_cnn(1, 4), "6"),
    (lambda: GenotypeNetwork(derive_genotype(torch.randn(14, 8), torch.randn(14, 8)), 1, 4, C=2, layers=2),
     "classifier"),
])
def test_head_is_the_final_classifier_layer(build_model, head):
    model = build_model()
    assert head_module_name(model) == head
    assert head_parameter_names(model) == [f"{head}.weight", f"{head}.bias"]
    split = {id(p) for p in head_parameters(model)} | {id(p) for p in body_parameters(model)}
    assert split == {id(p) for p in model.parameters()} and len(head_parameters(model)) == 2


def test_a_network_without_a_classifier_layer_has_no_head():
    with pytest.raises(ConfigError, match="no nn.Linear classifier"):
        head_module_name(nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten()))


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
    assert_same_states(algorithm.adapt(model, client_with(6), 4, 0, personal).state_dict(), personal)
    fallback = algorithm.adapt(model, client_with(6), 4, 0, {})
    assert_same_states(fallback.state_dict(), model.state_dict())
    assert not fallback.training and fallback is not model


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
    adapted = algorithm.adapt(model, client_with(10), 4, 0, head)
    assert_same_states(adapted.state_dict(), {**model.state_dict(), **head})
    new_client = algorithm.adapt(model, client_with(10), 4, 0, {})  # never trained: fits a head to the body
    for name, value in new_client.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]) == (not name.startswith("3.")), name


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


@pytest.mark.parametrize("trained", ["all", "head"])
def test_finetune_is_plain_sgd_on_cycled_client_batches(trained):
    model, client, lr = headed_model(), client_with(10), 0.1
    original = copy.deepcopy(model.state_dict())
    select = head_parameters if trained == "head" else None
    adapted = finetune(model, client, batch_size=4, seed=7, steps=3, lr=lr, parameters=select)
    loader = batch_loader(client.train, 4, shuffle=True, seed=7)  # 2 batches an epoch: the third step cycles
    reference = copy.deepcopy(model)
    for batch in (list(loader) + list(loader))[:3]:
        sgd_by_hand(reference, batch, select(reference) if select else list(reference.parameters()), lr)
    assert_same_states(model.state_dict(), original)
    for name, value in adapted.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[name], msg=name)
    assert not adapted.training
    assert torch.equal(adapted[1].weight, model[1].weight) == (trained == "head")


def test_cycled_batches():
    assert list(cycled([1, 2], 5)) == [1, 2, 1, 2, 1]
    assert list(cycled([], 3)) == []


def test_ditto_personal_models_survive_a_crash_and_resume(tiny_cfg, monkeypatch):
    overrides = ["algorithm=ditto", *SMALL_CNN, "federation.rounds=3", "federation.client_fraction=0.67"]
    straight = run_search(tiny_cfg("search", overrides, run="straight"))
    resumed = crash_then_resume(tiny_cfg, overrides, monkeypatch)
    expected, got = assert_same_checkpoints(straight, resumed)
    taking_part = {str(k) for round_idx in range(3) for k in sample_clients(0, round_idx, 3, 0.67)}
    assert got["personal"].keys() == expected["personal"].keys() == taking_part


@pytest.mark.parametrize("method", ["ditto", "fedrep", "fedbabu"])
def test_two_round_personalized_runs(tiny_cfg, method):
    cfg = tiny_cfg("search", [f"algorithm={method}", *SMALL_CNN, "personalize=true"])
    final = run_search(cfg)
    assert 0.0 <= final["personalized_acc_after_mean"] <= 1.0
    checkpoint = load_latest_checkpoint(Path(final["run_dir"]) / "checkpoints")
    torch.manual_seed(cfg.seed)  # the server's initial model, as FederatedRun builds it
    initial = build(cfg.algorithm).model_factory(in_channels=1, num_classes=4)  # synthetic: 1 channel, 4 classes
    head = head_parameter_names(initial)
    kept = {name for state in checkpoint["personal"].values() for name in state}
    assert kept == {"ditto": set(checkpoint["model"]), "fedrep": set(head), "fedbabu": set()}[method]
    if method != "ditto":  # the aggregate's head is the initial one: frozen (FedBABU) or sent back as received
        assert_same_states({k: checkpoint["model"][k] for k in head}, {k: initial.state_dict()[k] for k in head})


@pytest.mark.parametrize("method,override,key", [
    ("ditto", "algorithm.lam=-1", "algorithm.lam"),
    ("ditto", "algorithm.personal_lr=0", "algorithm.personal_lr"),
    ("fedrep", "algorithm.head_steps=-1", "algorithm.head_steps"),
    ("fedbabu", "algorithm.finetune_steps=-2", "algorithm.finetune_steps"),
    ("fedbabu", "algorithm.finetune_lr=0", "algorithm.finetune_lr"),
])
def test_bad_personalization_settings_are_one_clear_error(tiny_cfg, method, override, key):
    with pytest.raises(ConfigError, match=f"^{key} must be"):
        build(tiny_cfg("search", [f"algorithm={method}", "model=cnn", override]).algorithm)
