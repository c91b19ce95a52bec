"""FedPNAS and meta-FedPNAS: personal cells and their architecture stay on their client."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from federated_nas.algorithms.core.aggregation import WeightedAverage
from federated_nas.algorithms.core.base import ClientTask, RoundPlan
from federated_nas.algorithms.nas.fedpnas import FedPNAS
from federated_nas.data.federated_data import ClientData
from federated_nas.errors import ConfigError
from federated_nas.federation.backends import LocalBackend
from federated_nas.federation.checkpoint import load_latest_checkpoint
from federated_nas.federation.server import sample_clients
from federated_nas.runs import build, run_search
from federated_nas.search_space.genotypes import derive_genotype
from federated_nas.search_space.personalized import PersonalizedSearchNetwork, personalized_factory
from federated_nas.search_space.relaxations import GumbelSoftmaxRelaxation
from federated_nas.search_space.supernet import SearchNetwork
from helpers import (SGD, adapt_task, assert_same_checkpoints, assert_same_states, crash_then_resume, run_one_step,
                     tiny_batch)

# the synthetic preset's size, spelled out: the runs below stay seconds-long whatever the preset composes to
TINY_SPACE = ["search_space.C=2", "search_space.layers=2", "search_space.stem_stride=1", "logger=none"]
TINY_NET = functools.partial(SearchNetwork, C=2, layers=3)  # cells: normal, reduce, reduce (the personal one)


def personalized(seed: int = 0, **options) -> PersonalizedSearchNetwork:
    torch.manual_seed(seed)
    return PersonalizedSearchNetwork(1, 3, C=2, layers=3, **options)


def shifted_personal(model: PersonalizedSearchNetwork, seed: int) -> dict[str, torch.Tensor]:
    """A client's personal part that differs from the model's (floating entries moved, counters kept)."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    return {name: state[name] + 0.3 * torch.randn(state[name].shape, generator=g) if state[name].is_floating_point()
            else state[name].clone() for name in model.personal_names()}


def fednas_pnas(lr_w: float = 0.1, lr_a: float = 0.3, val_lambda: float = 0.5) -> FedPNAS:
    return FedPNAS("fednas", personal_cells=1, search_space=TINY_NET, w_optimizer=SGD,
                   alpha_optimizer=functools.partial(torch.optim.SGD, lr=lr_a), lr=lr_w, lr_min=lr_w,
                   val_lambda=val_lambda, grad_clip=None)


def client(client_id: int, samples: int) -> ClientData:
    g = torch.Generator().manual_seed(client_id)

    def split(n):
        return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))

    return ClientData(client_id, split(samples), split(samples), split(4))


# --- the network ----------------------------------------------------------------------------------

def test_personal_cells_with_the_base_architecture_are_the_plain_supernet():
    """Same weights, personal alphas = base alphas: the same function as SearchNetwork."""
    torch.manual_seed(0)
    plain = TINY_NET(1, 3, relaxation=GumbelSoftmaxRelaxation(0.5), input_combinations=2).double()
    net = personalized(relaxation=GumbelSoftmaxRelaxation(0.5), input_combinations=2).double()
    renamed = {name.replace("cells.2.", "personal_cells.0.") if name.startswith("cells.2.") else name: value
               for name, value in plain.state_dict().items()}
    with torch.no_grad():
        for kind in ("normal", "reduce"):
            for arch in ("alpha", "beta"):
                renamed[f"{arch}_personal_{kind}"] = renamed[f"{arch}_{kind}"]
    net.load_state_dict(renamed)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(net.eval()(x), plain.eval()(x), rtol=0, atol=1e-12)
    assert {name for name in net.personal_names()} >= {"classifier.weight", "alpha_personal_reduce",
                                                       "beta_personal_normal"}
    assert all(name.startswith(("personal_cells.0.", "classifier.", "alpha_personal", "beta_personal"))
               for name in net.personal_names())
    assert len(net.cells) == 2 and len(net.personal_cells) == 1 and net.personal_cells[0].reduction


def test_personal_genotype_is_derived_from_the_personal_architecture():
    net = personalized()
    with torch.no_grad():
        net.alpha_personal_normal.copy_(torch.randn_like(net.alpha_personal_normal))
        net.alpha_personal_reduce.copy_(torch.randn_like(net.alpha_personal_reduce))
    assert net.personal_genotype() == derive_genotype(net.alpha_personal_normal, net.alpha_personal_reduce)
    assert net.genotype() == derive_genotype(net.alpha_normal, net.alpha_reduce)
    assert net.personal_genotype() != net.genotype()


def test_pruning_acts_on_the_base_and_never_on_personal_cells():
    net = personalized(relaxation=GumbelSoftmaxRelaxation(1.0), input_combinations=2)
    personal_before = {name: value.shape for name, value in net.state_dict().items()
                       if name in net.personal_names()}
    removed = net.prune(0.2)  # near-uniform over 8 ops: every op but each edge's strongest goes
    assert removed["ops"] > 0 and not any("personal" in name for name in net.masks())
    state = net.state_dict()
    assert {name: state[name].shape for name in net.personal_names()} == personal_before
    fresh = personalized(seed=5, relaxation=GumbelSoftmaxRelaxation(1.0), input_combinations=2)
    fresh.match_structure(state)
    fresh.load_state_dict(state)  # the pruned structure travels in the state dict, personal cells as they were
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(fresh.eval()(x), net.eval()(x))
    discrete = net.discretized()
    assert {name: discrete.state_dict()[name].shape for name in net.personal_names()} == personal_before


@pytest.mark.parametrize("personal_cells,layers", [(2, 2), (-1, 2), (1.5, 2)])
def test_bad_personal_cells_are_one_clear_error(personal_cells, layers):
    with pytest.raises(ConfigError, match="^algorithm.personal_cells must be an integer"):
        personalized_factory(functools.partial(SearchNetwork, C=2, layers=layers), personal_cells)
    with pytest.raises(ConfigError, match="^algorithm.local_search must be one of fednas, fedmetanas"):
        FedPNAS("darts", search_space=TINY_NET)
    with pytest.raises(ConfigError, match="need the DARTS cell search space"):
        personalized_factory(lambda **_: torch.nn.Linear(2, 2), 1)


def test_switching_the_local_search_keeps_its_options_checked(tiny_cfg):
    with pytest.raises(ConfigError, match=r"^algorithm\.\w+ is not an option of algorithm\.local_search=fednas"):
        build(tiny_cfg("search", ["algorithm=meta_fedpnas", "algorithm.local_search=fednas"]).algorithm)
    with pytest.raises(ConfigError, match="^algorithm.personal_cells must be an integer in \\[0, search_space.layers"):
        build(tiny_cfg("search", ["algorithm=fedpnas", "algorithm.personal_cells=9"]).algorithm)


# --- the local step and the aggregate -------------------------------------------------------------

@pytest.mark.parametrize("val_lambda", [0.0, 0.5])
def test_local_step_is_milenas_on_base_and_the_clients_personal_part(val_lambda):
    """w <- w - lr_w g_w(L_tr), alpha <- alpha - lr_a (g_a(L_tr) + lambda g_a(L_val)) over base + personal, at the
    client's own personal part; the client keeps the stepped personal part and uploads the received one."""
    lr_w, lr_a = 0.1, 0.3
    algorithm = fednas_pnas(lr_w, lr_a, val_lambda)
    torch.manual_seed(0)
    model = algorithm.search.search_space(in_channels=1, num_classes=3)
    received = copy.deepcopy(model.state_dict())
    personal = shifted_personal(model, seed=1)
    train, val = tiny_batch(1), tiny_batch(2)

    reference = copy.deepcopy(model)
    reference.load_state_dict(personal, strict=False)
    weights, arch = reference.weight_parameters(), reference.arch_parameters()
    found = torch.autograd.grad(F.cross_entropy(reference(train[0]), train[1]), weights + arch, allow_unused=True)
    g_val = [None] * len(arch)
    if val_lambda:  # as MiLeNAS: no val forward (nor its BatchNorm statistics) when lambda is 0
        g_val = torch.autograd.grad(F.cross_entropy(reference(val[0]), val[1]), arch, allow_unused=True)
    zero = [torch.zeros_like(p) for p in weights + arch]
    found = [z if g is None else g for g, z in zip(found, zero)]
    g_val = [torch.zeros_like(a) if g is None else g for g, a in zip(g_val, arch)]
    with torch.no_grad():
        for param, g in zip(weights, found[: len(weights)]):
            param.sub_(lr_w * g)
        for param, g_tr, g_v in zip(arch, found[len(weights):], g_val):
            param.sub_(lr_a * (g_tr + val_lambda * g_v))
    expected = reference.state_dict()

    module = algorithm.local_module(model, ClientTask(client(0, 4), RoundPlan(0, 1, 0, 1, None, 4), 0, personal))
    run_one_step(module, {"train": train, "val": val})
    names = set(model.personal_names())
    assert module.personal.keys() == names
    for name in names:  # weights, architecture and BatchNorm statistics of the personal cells
        torch.testing.assert_close(module.personal[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, received[name] if name in names else expected[name],
                                   rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(module.personal["alpha_personal_reduce"], received["alpha_personal_reduce"])


def test_the_aggregate_averages_the_base_and_never_the_personal_part():
    """Two clients (4 and 12 samples, one with a personal part already): base = (4 s0 + 12 s1) / 16, exactly;
    personal part = the global one, untouched; each client keeps its own."""
    algorithm = fednas_pnas()
    torch.manual_seed(0)
    model = algorithm.search.search_space(in_channels=1, num_classes=3)
    global_state = copy.deepcopy(model.state_dict())
    clients = [client(0, 4), client(1, 12)]
    kept = {0: shifted_personal(model, seed=3)}
    backend = LocalBackend(L.Trainer)
    updates = list(backend.run_round(algorithm, model, clients, RoundPlan(0, 1, 0, 1, 1, 4), kept))
    average = WeightedAverage(global_state)
    for update in updates:
        average.add(update.state, update.num_samples)
    result, names = average.result(), set(model.personal_names())
    for name, value in result.items():
        if name in names:
            assert torch.equal(value, global_state[name]), name
        elif value.is_floating_point():
            by_hand = (4 * updates[0].state[name].double() + 12 * updates[1].state[name].double()) / 16
            torch.testing.assert_close(value, by_hand.float(), rtol=0, atol=1e-7, msg=name)
    assert any(not torch.equal(result[n], global_state[n]) for n in result if n not in names)
    for update in updates:
        assert update.personal.keys() == names
        assert not torch.equal(update.personal["classifier.weight"], global_state["classifier.weight"])
    assert not torch.equal(updates[0].personal["classifier.weight"], updates[1].personal["classifier.weight"])


def test_adapt_is_the_global_base_with_the_clients_personal_cells():
    algorithm = fednas_pnas()
    torch.manual_seed(0)
    model = algorithm.search.search_space(in_channels=1, num_classes=3)
    personal = shifted_personal(model, seed=4)
    adapted = algorithm.adapt(model, adapt_task(client(0, 8), 4, 0, personal))
    assert_same_states(adapted.state_dict(), {**model.state_dict(), **personal})
    assert not adapted.training and adapted.personal_genotype() != model.personal_genotype()
    new_client = algorithm.adapt(model, adapt_task(client(0, 8), 4, 0))  # never trained: fits its personal part
    personal_names = set(model.personal_names())
    for name, value in new_client.named_parameters():
        if name not in personal_names:
            assert torch.equal(value, model.state_dict()[name]), name
    for name in ("classifier.weight", "alpha_personal_reduce", "personal_cells.0.preprocess1.1.weight"):
        assert not torch.equal(new_client.state_dict()[name], model.state_dict()[name]), name


# --- runs -----------------------------------------------------------------------------------------

def initial_personal_part(cfg) -> tuple[set[str], dict[str, torch.Tensor]]:
    """The personal part of the server's initial model, built as FederatedRun builds it."""
    algorithm = build(cfg.algorithm)
    torch.manual_seed(cfg.seed)
    initial = algorithm.search.search_space(in_channels=1, num_classes=4, **algorithm.search.supernet_options())
    names = set(initial.personal_names())  # synthetic data: 1 channel, 4 classes
    return names, {name: initial.state_dict()[name] for name in names}


@pytest.mark.end_to_end
def test_personal_cells_stay_on_their_clients_through_a_crash_and_resume(tiny_cfg, monkeypatch):
    """Per-client personal state of a resumed run equals an uninterrupted run's; the uninterrupted run is also
    fedpnas' 2-round run with personalize=true (local accuracy per client)."""
    overrides = ["algorithm=fedpnas", *TINY_SPACE, "federation.client_fraction=0.67", "federation.local_batches=1"]
    straight = run_search(tiny_cfg("search", overrides + ["personalize=true"], run="straight"))
    resumed = crash_then_resume(tiny_cfg, overrides, monkeypatch)
    expected, got = assert_same_checkpoints(straight, resumed)
    taking_part = {str(k) for round_idx in range(2) for k in sample_clients(0, round_idx, 3, 0.67)}
    assert got["personal"].keys() == expected["personal"].keys() == taking_part
    local = json.loads((Path(straight["run_dir"]) / "personalized" / "client_accuracy.json").read_text())
    assert local["clients"] == [0, 1, 2] and all(0.0 <= acc <= 1.0 for acc in local["after"])
    names, initial = initial_personal_part(tiny_cfg("search", overrides))
    assert_same_states({name: expected["model"][name] for name in names}, initial)  # never averaged
    assert all(state.keys() == names for state in expected["personal"].values())


@pytest.mark.end_to_end
def test_two_round_meta_fedpnas_prunes_the_base_and_reports_local_accuracy(tiny_cfg):
    overrides = ["algorithm=meta_fedpnas", "personalize=true", *TINY_SPACE, "federation.local_batches=1",
                 "algorithm.pruning.at=[0.5]", "algorithm.pruning.threshold=0.2"]  # prunes the base after round 1
    cfg = tiny_cfg("search", overrides)
    final = run_search(cfg)
    assert 0.0 <= final["personalized_acc_after_mean"] <= 1.0
    checkpoint = load_latest_checkpoint(Path(final["run_dir"]) / "checkpoints")
    names, initial = initial_personal_part(cfg)
    assert_same_states({name: checkpoint["model"][name] for name in names}, initial)
    assert checkpoint["personal"].keys() == {"0", "1", "2"}
    assert all(state.keys() == names for state in checkpoint["personal"].values())
    assert checkpoint["history"][0]["pruned_ops"] > 0 and build(cfg.algorithm).name == "meta_fedpnas"
    assert any(not mask.all() for name, mask in checkpoint["model"].items() if "op_mask_" in name)
    assert (Path(final["run_dir"]) / "personalized" / "client_0.json").exists()
