"""What the supernet-search methods share: building the supernet, per-round architecture facts,
and the discrete model with inherited weights (the "after" column of FedMetaNAS' Table 3)."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from federated_nas.algorithms.core.base import Evaluate, FederatedAlgorithm, RoundPlan
from federated_nas.algorithms.core.schedules import PruningSchedule, TemperatureSchedule, as_component
from federated_nas.data.federated_data import FederatedData
from federated_nas.errors import ConfigError
from federated_nas.search_space.network import count_parameters
from federated_nas.search_space.supernet import SearchNetwork


@torch.no_grad()
def recalibrate_batch_norm(model: SearchNetwork, inputs: Iterable[torch.Tensor]) -> None:
    """Every BatchNorm's running statistics, recomputed as the exact average over ``inputs`` under the
    evaluation relaxation (deterministic op weights).

    Sampled relaxations (Gumbel-softmax) train near-one-hot paths, so the statistics gathered in
    training describe activations the evaluated mixture never produces. Only evaluation reads
    running statistics, so training is unchanged (one-shot NAS' BN recalibration, as in SPOS).
    When evaluation is one child (one-hot weights), every op still runs on that child's node states,
    so whichever op the averaged alpha picks next has statistics of the inputs it will see.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta, was_training = [norm.momentum for norm in norms], model.training
    model.train()
    model.relaxation.eval()
    model.compute_every_op = True
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average
    try:
        for x in inputs:
            model(x)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.compute_every_op = False
        model.train(was_training)


FINAL_MODELS = {  # what a method ships (``algorithm.final_model``) -> the round metric that sizes it
    "supernet": "supernet_params",          # FedMetaNAS: the (pruned) supernet itself, no retraining
    "discretized": "derived_params",        # FedNAS: the derived genotype, trained from scratch by src/train.py
    "most_likely_child": "child_params",    # FedDSNAS, FedRLNAS: every edge's argmax op, no retraining
}


class SupernetAlgorithm(FederatedAlgorithm):
    """A federated method whose global model is a ``SearchNetwork``.

    Its per-round schedules are components (``schedules.py``): ``temperature`` is applied to the model
    a client trains and to the server's aggregate, ``pruning`` to the aggregate alone; a method
    without one passes None. ``final_model`` names what the method ships: it sizes
    ``final_model_params`` and is the discrete model evaluated beside the global one
    (``global_test_acc_discrete``, FedMetaNAS' Table 3).
    """

    def __init__(self, search_space: Callable[..., SearchNetwork],
                 temperature: TemperatureSchedule | Mapping | None = None,
                 pruning: PruningSchedule | Mapping | None = None, final_model: str = "supernet"):
        if final_model not in FINAL_MODELS:
            raise ConfigError(f"algorithm.final_model must be one of {', '.join(FINAL_MODELS)}, got {final_model!r}")
        self.search_space = search_space
        self.temperature: TemperatureSchedule | None = as_component(TemperatureSchedule, temperature)
        self.pruning: PruningSchedule | None = as_component(PruningSchedule, pruning)
        self.final_model = final_model
        self.input_shape: tuple[int, ...] = ()

    @property
    def final_params_metric(self) -> str:
        return FINAL_MODELS[self.final_model]

    def supernet_options(self) -> dict[str, Any]:
        """Extra constructor arguments of this method's supernet (relaxation, input combinations)."""
        return {}

    def build_model(self, data: FederatedData) -> SearchNetwork:
        check_input_kind(self.search_space, data.input_shape)
        self.input_shape = (1, *data.input_shape)
        return self.search_space(in_channels=data.in_channels, num_classes=data.num_classes,
                                 **self.supernet_options())

    def prepare_client_model(self, model: SearchNetwork, plan: RoundPlan) -> None:
        """The round's temperature on the model a client is about to train."""
        if self.temperature is not None:
            self.temperature.apply(model, plan.round_idx, plan.rounds)

    def after_aggregation(self, model: SearchNetwork, round_idx: int, rounds: int,
                          evaluate: Evaluate | None = None) -> dict[str, Any]:
        """Each schedule the method has, applied to the aggregate: the round's temperature, then any pruning due.
        Pruning at the last round also reports the accuracy before it (FedMetaNAS' Table 3: what pruning the
        final model cost, same weights and temperature)."""
        last = round_idx == rounds - 1
        unpruned = copy.deepcopy(model) if last and evaluate is not None and self.pruning is not None else None
        report: dict[str, Any] = {}
        for schedule in (self.temperature, self.pruning):
            if schedule is not None:
                report.update(schedule.apply(model, round_idx, rounds))
        if unpruned is not None and (report.get("pruned_ops") or report.get("pruned_combinations")):
            unpruned.relaxation = copy.deepcopy(model.relaxation)
            report["global_test_acc_before_pruning"] = evaluate(unpruned)
        return report

    def server_state(self, model: SearchNetwork) -> dict[str, Any]:
        """The relaxation's annealed temperature: no tensor of the model, so a run resumed after its last round
        (to personalize) or validated evaluates at the final value, not the schedule's start."""
        temperature = getattr(model.relaxation, "temperature", None)
        return {} if temperature is None else {"temperature": float(temperature)}

    def load_server_state(self, model: SearchNetwork, state: dict[str, Any]) -> None:
        if state.get("temperature") is not None:
            model.relaxation.temperature = float(state["temperature"])

    def round_report(self, model: SearchNetwork) -> dict[str, Any]:
        genotype, entropy, uniform = model.genotype(), alpha_entropy(model), math.log(len(model.primitives))
        report = {
            "genotype": genotype,
            "alpha_entropy": entropy,
            # both normalised by ln(#ops): 1 is uniform, 0 one op per edge; the second reads the weights the
            # cells use (softmax(alpha / T) for tempered relaxations), which sharpen as T anneals
            "alpha_entropy_normalized": entropy / uniform,
            "op_weight_entropy_normalized": alpha_entropy(model, deterministic_weights=True) / uniform,
            "skip_connect_count": genotype.count("skip_connect"),
            "derived_params": count_parameters(model.derived_network()),
            "supernet_params": count_parameters(model),
            # per edge and op, for the heatmap of the architecture over rounds (kept in the history)
            "alpha_probabilities": {"primitives": list(model.primitives),
                                    **{kind: model.op_probabilities(kind).cpu().tolist()
                                       for kind in model.arch_kinds}},
        }
        if self.final_model == "most_likely_child":  # its size costs a copy of the supernet: only where shipped
            report["child_params"] = count_parameters(model.most_likely_child())
        if self.input_shape:
            report["supernet_flops"] = forward_flops(model, self.input_shape)
        return report

    def discrete_model(self, model: SearchNetwork) -> SearchNetwork:
        """The single-path methods' argmax child (which their server already evaluates, so its accuracy
        repeats ``global_test_acc`` as a check); else the genotype's ops with inherited weights."""
        return model.most_likely_child() if self.final_model == "most_likely_child" else model.discretized()


def check_recalibration_batches(batches: int) -> int:
    if not (isinstance(batches, int) and batches >= 0):
        raise ConfigError(f"algorithm.bn_recalibration_batches must be an integer >= 0, got {batches}")
    return batches


def check_warmup(warmup: float) -> float:
    if not (isinstance(warmup, (int, float)) and 0 <= warmup < 1):
        raise ConfigError(f"algorithm.warmup is the fraction of rounds before alpha moves, in [0, 1), got {warmup}")
    return float(warmup)


def warming_up(warmup: float, round_idx: int, rounds: int) -> bool:
    """Whether ``round_idx`` is in the first ``warmup`` fraction of the rounds (a function of the round: resume-safe)."""
    return round_idx < int(round(warmup * rounds))


def alpha_entropy(model: SearchNetwork, deterministic_weights: bool = False) -> float:
    """Mean entropy (nats) of the live op distribution per edge: falls as the search commits.

    ``deterministic_weights``: of the op weights evaluation uses (the relaxation's temperature included).
    """
    entropies = []
    for kind in model.arch_kinds:
        p = model.op_probabilities(kind) if deterministic_weights else model.op_distribution(kind)
        entropies.append(-(p * p.clamp_min(1e-12).log()).sum(-1))
    return float(torch.cat(entropies).mean())


INPUT_KINDS = {1: "vector data [N, features] (search_space=mlp)", 3: "images [N, C, H, W] (search_space=darts)"}


def check_input_kind(search_space: Callable[..., SearchNetwork], sample_shape: tuple[int, ...]) -> None:
    """One line, before anything is built, when the search space cannot read the dataset's samples."""
    space = getattr(search_space, "func", search_space)  # Hydra's _partial_ gives a functools.partial
    expected = getattr(space, "input_ndim", None)
    if expected is not None and expected != len(sample_shape):
        name = getattr(space, "__name__", space)
        raise ConfigError(f"search_space {name} takes {INPUT_KINDS.get(expected, expected)}, "
                          f"but the dataset's samples have shape {list(sample_shape)}: "
                          f"use the search space for {INPUT_KINDS.get(len(sample_shape), 'them')}")


@torch.no_grad()
def forward_flops(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one deterministic forward pass of one sample (falls as ops are pruned)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(input_shape, device=device))
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)
