"""The schedules as components: config nodes built into schedule objects, their known values, what the
server applies after aggregation, the ``final_model`` key, and the cosine learning rate over rounds."""

from __future__ import annotations

import functools

import pytest
import torch
from hydra import compose, initialize_config_dir

from federated_nas.algorithms.core.base import cosine_lr
from federated_nas.algorithms.core.schedules import PruningSchedule, TemperatureSchedule
from federated_nas.algorithms.nas.fedmetanas import FedMetaNAS
from federated_nas.builders import build
from federated_nas.errors import ConfigError
from federated_nas.search_space.supernet import SearchNetwork
from helpers import CONFIG_DIR, SGD

TINY_SPACE = functools.partial(SearchNetwork, C=2, layers=2)


def composed_algorithm(name: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return build(compose("search", overrides=[f"algorithm={name}"]).algorithm)


@pytest.mark.parametrize("name, temperature, pruning, final_params", [
    ("fednas", None, None, "derived_params"),
    ("fedmetanas", (1.0, 0.5), [0.5, 0.75, 1.0], "supernet_params"),
    ("fedmetanas_paper", (1.0, 0.1), [0.5, 0.75], "supernet_params"),
    ("feddsnas", (1.0, 0.1), None, "child_params"),
    ("fedrlnas", None, [], "child_params"),
    ("meta_perfedrlnas", None, [0.5, 0.75], "child_params"),
])
def test_each_method_config_builds_its_schedules_and_names_its_final_model(name, temperature, pruning, final_params):
    algorithm = composed_algorithm(name)
    if temperature is None:
        assert algorithm.temperature is None
    else:
        assert isinstance(algorithm.temperature, TemperatureSchedule)
        assert (algorithm.temperature.start, algorithm.temperature.end) == temperature
    if pruning is None:
        assert algorithm.pruning is None
    else:
        assert isinstance(algorithm.pruning, PruningSchedule) and algorithm.pruning.at == pruning
    assert algorithm.final_params_metric == final_params


def test_pruning_rounds_are_a_function_of_the_fractions_alone():
    assert PruningSchedule([0.5, 0.75, 1.0]).rounds_due(12) == {5, 8, 11}
    assert PruningSchedule([0.5, 0.75, 1.0]).rounds_due(1) == {0}
    assert PruningSchedule([0.1]).rounds_due(4) == {0}  # never before the first round
    assert PruningSchedule([]).rounds_due(12) == set()


def test_temperature_shapes_at_known_points():
    assert TemperatureSchedule(1.0, 0.1, "linear").temperature_at(1, 3) == pytest.approx(0.55)
    assert TemperatureSchedule(1.0, 0.01, "exponential").temperature_at(1, 3) == pytest.approx(0.1)
    assert TemperatureSchedule(1.0, 0.0001, "cosine").temperature_at(1, 3) == pytest.approx(0.50005)


def test_after_aggregation_applies_the_temperature_then_the_pruning_due():
    """The last round: the final temperature is set first, so pruning reads the weights evaluation uses."""
    algorithm = FedMetaNAS(TINY_SPACE, SGD, SGD, temperature={"start": 1.0, "end": 0.5},
                           pruning={"at": [1.0], "threshold": 0.2})
    torch.manual_seed(0)
    model = algorithm.build_model(type("Data", (), {"in_channels": 1, "num_classes": 3, "input_shape": (1, 8, 8)}))
    with torch.no_grad():
        model.alpha_normal[:, 3] = 4.0  # at T = 0.5 op 3 takes nearly all the weight on every normal edge
    assert algorithm.after_aggregation(model, 0, 3) == {"temperature": 1.0}  # nothing due
    report = algorithm.after_aggregation(model, 2, 3)
    assert report["temperature"] == model.relaxation.temperature == 0.5
    assert report["pruned_ops"] > 0 and bool(model.op_mask_normal[:, 3].all())
    assert int(model.op_mask_normal.sum()) == model.op_mask_normal.shape[0]  # one op left per normal edge

    # the last round's pruning reports what it cost: the model before it, same weights and temperature
    model.op_mask_normal.fill_(True)
    seen = []
    report = algorithm.after_aggregation(model, 2, 3, evaluate=lambda m: seen.append(m) or 0.25)
    assert report["global_test_acc_before_pruning"] == 0.25 and len(seen) == 1
    assert bool(seen[0].op_mask_normal.all()) and seen[0].relaxation.temperature == 0.5


def test_server_state_carries_the_temperature_through_a_checkpoint():
    """The annealed temperature is no tensor: the algorithm's server state keeps it, old checkpoints included."""
    from federated_nas.algorithms.core.base import saved_server_state

    algorithm = FedMetaNAS(TINY_SPACE, SGD, SGD, temperature={"start": 1.0, "end": 0.5})
    data = type("Data", (), {"in_channels": 1, "num_classes": 3, "input_shape": (1, 8, 8)})
    model = algorithm.build_model(data)
    algorithm.after_aggregation(model, 2, 3)
    assert algorithm.server_state(model) == {"temperature": 0.5}
    fresh = algorithm.build_model(data)
    algorithm.load_server_state(fresh, saved_server_state({"algorithm_state": algorithm.server_state(model)}))
    assert fresh.relaxation.temperature == 0.5
    assert saved_server_state({"temperature": 0.3}) == {"temperature": 0.3}  # written before the hook
    assert saved_server_state({"temperature": None}) == {}


@pytest.mark.parametrize("options, message", [
    ({"final_model": "genotype"}, "algorithm.final_model must be one of supernet, discretized, most_likely_child"),
    ({"pruning": {"at": [0.0]}}, r"algorithm.pruning.at holds fractions of the rounds in \(0, 1\]"),
    ({"pruning": {"every": 2}}, "PruningSchedule settings"),
    ({"temperature": {"start": 1.0, "clock": "epochs"}}, "algorithm.temperature"),
])
def test_a_bad_schedule_or_final_model_is_one_config_error(options, message):
    with pytest.raises(ConfigError, match=message):
        FedMetaNAS(TINY_SPACE, SGD, SGD, **options)


def test_cosine_lr_schedule_over_rounds():
    assert cosine_lr(0.025, 0.001, 0, 50) == pytest.approx(0.025)
    assert cosine_lr(0.025, 0.001, 25, 50) == pytest.approx(0.013)
    assert cosine_lr(0.025, 0.001, 50, 50) == pytest.approx(0.001)
