"""The MLP search space for vector data: mixed layers, genotypes, pruning, vector datasets, tiny runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from federated_nas.algorithms.core.aggregation import load_state
from federated_nas.data.vectors import load_tabular_dataset, make_signal_dataset
from federated_nas.errors import ConfigError
from federated_nas.runs import run_search, run_train
from federated_nas.search_space.architecture import MASKED
from federated_nas.search_space.mlp import MLP_PRIMITIVES, MixedLayer, MLPGenotype, MLPSearchNetwork
from federated_nas.search_space.relaxations import GumbelSoftmaxRelaxation

OPS = {name: k for k, name in enumerate(MLP_PRIMITIVES)}
VECTOR = ["dataset=synthetic_vector", "search_space.hidden=8", "search_space.layers=2", "logger=none"]


def test_mixed_layer_is_the_hand_computed_weighted_sum_then_normalised():
    """2 features, every linear weight 2*I and bias -1, so each op acts on each feature alone."""
    layer = MixedLayer(2)
    with torch.no_grad():
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(2.0 * torch.eye(2))
                module.bias.fill_(-1.0)
    x = torch.tensor([[0.5, 2.0]])
    weights = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.05, 0.2])  # none, skip, linear, linear_relu, linear_tanh, mlp2
    # x=0.5: linear 0, relu 0, tanh 0, mlp2: 2*relu(0)-1 = -1          -> 0.2*0.5 + 0.2*(-1) = -0.1
    # x=2:   linear 3, relu 3, tanh(3), mlp2: 2*3-1 = 5 -> 0.2*2 + 0.3*3 + 0.15*3 + 0.05*tanh(3) + 0.2*5
    low, high = -0.1, 0.4 + 0.9 + 0.45 + 0.05 * math.tanh(3.0) + 1.0
    torch.testing.assert_close(layer.mixed(x, weights), torch.tensor([[low, high]]))
    half_gap = (high - low) / 2  # LayerNorm of two values: -+ half_gap / sqrt(half_gap^2 + eps)
    normalised = half_gap / math.sqrt(half_gap ** 2 + 1e-5)
    torch.testing.assert_close(layer(x, weights), torch.tensor([[-normalised, normalised]]))
    torch.testing.assert_close(layer(x, weights, skip_zero=True), layer(x, weights))
    one_hot = torch.zeros(6)
    one_hot[OPS["linear_relu"]] = 1.0
    torch.testing.assert_close(layer.mixed(x, one_hot, skip_zero=True), torch.tensor([[0.0, 3.0]]))


def test_network_uses_the_relaxation_of_alpha_per_layer():
    torch.manual_seed(0)
    net = MLPSearchNetwork(5, 3, hidden=4, layers=2, relaxation=GumbelSoftmaxRelaxation(0.5)).eval()
    x = torch.randn(6, 5)
    weights = torch.softmax(net.alpha_layers / 0.5, -1)
    h = net.stem(x)
    for layer, w in zip(net.layers, weights):
        h = torch.nn.functional.layer_norm(sum(w[OPS[name]] * op(h) for name, op in layer.ops.items()), (4,))
    torch.testing.assert_close(net(x), net.classifier(h))
    assert net(x).shape == (6, 3)
    assert len(net.arch_parameters()) == 1
    assert len(net.arch_parameters()) + len(net.weight_parameters()) == len(list(net.parameters()))


def make_alphas(net: MLPSearchNetwork, strongest: list[str]) -> None:
    """Hand-made alphas: ``none`` strongest everywhere (never chosen), then the listed op, the rest low."""
    with torch.no_grad():
        net.alpha_layers.fill_(-30.0)
        net.alpha_layers[:, OPS["none"]] = 5.0
        for layer, name in enumerate(strongest):
            net.alpha_layers[layer, OPS[name]] = 2.0
        net.alpha_layers[0, OPS["linear"]] = 1.5  # a runner-up that pruning at 0.05 keeps


def test_genotype_on_hand_made_alphas_and_its_json(tmp_path):
    net = MLPSearchNetwork(4, 2, hidden=3, layers=3)
    make_alphas(net, ["mlp2", "skip_connect", "linear_tanh"])
    genotype = net.genotype()
    assert genotype == MLPGenotype(["mlp2", "skip_connect", "linear_tanh"])
    assert genotype.count("skip_connect") == 1
    path = genotype.save(tmp_path / "genotype.json")
    assert json.loads(path.read_text()) == {"layers": ["mlp2", "skip_connect", "linear_tanh"]}
    assert MLPGenotype.load(path) == genotype
    with torch.no_grad():  # a removed op is never chosen
        net.op_mask_layers[0, OPS["mlp2"]] = False
    assert net.genotype().layers[0] == "linear"
    derived = net.derived_network()
    assert [type(m[0]).__name__ for m in derived.layers] == ["Linear", "Identity", "Sequential"]


def test_pruning_keeps_the_function_and_the_state_carries_the_structure():
    torch.manual_seed(1)
    net = MLPSearchNetwork(4, 2, hidden=3, layers=3).double().eval()
    make_alphas(net, ["mlp2", "linear_relu", "linear_tanh"])
    x = torch.randn(5, 4, dtype=torch.float64)
    before = net(x)
    params_before = sum(p.numel() for p in net.parameters())
    # softmax of [5, 2, 1.5 (layer 0), -30, ...]: none 0.93, chosen 0.046, linear 0.028, the rest ~6e-16
    removed = net.prune(0.001)
    assert removed == {"ops": 3 * 6 - (3 + 2 + 2), "combinations": 0}  # none stays (weight 0.93): it costs nothing
    assert sorted(net.layers[0].ops) == ["linear", "mlp2"] and sorted(net.layers[1].ops) == ["linear_relu"]
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-12)  # the removed ops weighed ~6e-16
    assert sum(p.numel() for p in net.parameters()) < params_before
    assert net.genotype() == MLPGenotype(["mlp2", "linear_relu", "linear_tanh"])
    fresh = MLPSearchNetwork(4, 2, hidden=3, layers=3).double()
    load_state(fresh, net.state_dict())  # a pruned state rebuilds its structure first
    torch.testing.assert_close(fresh.eval()(x), net(x))


def test_discretized_keeps_one_op_per_layer_with_trained_weights():
    torch.manual_seed(2)
    net = MLPSearchNetwork(4, 2, hidden=3, layers=2).eval()
    make_alphas(net, ["linear_relu", "skip_connect"])
    discrete = net.discretized()
    assert [sorted(layer.ops) for layer in discrete.layers] == [["linear_relu"], ["skip_connect"]]
    x = torch.randn(3, 4)
    weights = torch.softmax(discrete.alpha_layers.masked_fill(~discrete.op_mask_layers, MASKED), -1)
    assert torch.equal(weights[:, [OPS["linear_relu"], OPS["skip_connect"]]].diag(), torch.ones(2))
    norm = net.layers[0].norm
    expected = net.classifier(norm(norm(net.layers[0].ops["linear_relu"](net.stem(x)))))  # then skip
    torch.testing.assert_close(discrete(x), expected)


def test_vector_datasets_are_seeded_standardised_and_split():
    signal = make_signal_dataset(num_features=3, num_classes=5, train_per_class=4, test_per_class=2, seed=1)
    assert signal.train_x.shape == (20, 3) and signal.test_x.shape == (10, 3) and signal.in_channels == 3
    assert torch.equal(signal.train_x, make_signal_dataset(3, 5, 4, 2, seed=1).train_x)
    digits = load_tabular_dataset("digits", test_fraction=0.25, split_seed=0)
    assert digits.train_x.shape[1] == 64 and digits.num_classes == 10
    assert len(digits.train_y) + len(digits.test_y) == 1797
    assert torch.bincount(digits.test_y).min() >= 40  # stratified: every class in the test split
    live = digits.train_x.std(0) > 0
    torch.testing.assert_close(digits.train_x.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(digits.train_x.std(0, unbiased=False)[live], torch.ones(int(live.sum())),
                               atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="iris"):
        load_tabular_dataset("iris")


@pytest.mark.parametrize("algorithm", ["fednas", "fedmetanas"])
def test_two_round_search_on_vector_data(tiny_cfg, algorithm):
    """FedMetaNAS with the paper's input_combinations=2, which the chain accepts and ignores."""
    overrides = [*VECTOR, f"algorithm={algorithm}", "plots_every=0"]
    if algorithm == "fedmetanas":
        overrides += ["algorithm.pruning.at=[0.5]", "algorithm.pruning.threshold=0.2", "algorithm.input_combinations=2"]
    cfg = tiny_cfg("search", overrides)
    assert cfg.algorithm.get("input_combinations") == (2 if algorithm == "fedmetanas" else None)
    result = run_search(cfg)
    assert 0.0 <= result["global_test_acc"] <= 1.0
    run_dir = Path(result["run_dir"])
    genotype = MLPGenotype.load(run_dir / "genotype.json")
    assert len(genotype.layers) == 2 and "none" not in genotype.layers
    assert result["skip_connect_count"] == genotype.count("skip_connect")
    assert (run_dir / "figures" / "alpha_layers.png").is_file() and not (run_dir / "figures" / "normal.png").exists()
    if algorithm == "fedmetanas":
        assert result["supernet_params"] < 8 * 8 + 8 + 2 * (5 * 72) + 8 * 4 + 4  # pruned below the full supernet
    else:  # the train stage: FedAvg on the discrete MLP of the saved genotype
        trained = run_train(tiny_cfg("train", [*VECTOR, "model=mlp_genotype", f"search_run={run_dir}",
                                               "federation.rounds=1"], run="train"))
        assert trained["params"] == result["derived_params"]


def test_two_round_fedavg_with_the_fixed_mlp(tiny_cfg):
    result = run_search(tiny_cfg("search", [*VECTOR, "algorithm=fedavg", "model=mlp", "model.hidden=[16]"]))
    assert result["params"] == 8 * 16 + 16 + 16 * 4 + 4
    assert 0.0 <= result["global_test_acc"] <= 1.0


@pytest.mark.parametrize("overrides, message", [
    (["dataset=synthetic_vector", "search_space=darts"], r"takes images \[N, C, H, W\].*shape \[8\]"),
    (["dataset=synthetic", "search_space=mlp"], r"takes vector data \[N, features\].*shape \[1, 8, 8\]"),
])
def test_search_space_and_data_mismatch_is_one_line(tiny_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        run_search(tiny_cfg("search", [*overrides, "logger=none"]))
    assert "\n" not in str(err.value)


def test_fixed_image_model_on_vector_data_is_one_line_and_writes_nothing(tiny_cfg, tmp_path):
    cfg = tiny_cfg("search", ["dataset=synthetic_vector", "algorithm=fedavg", "model=cnn", "logger=none"])
    with pytest.raises(ConfigError, match=r"algorithm=fedavg cannot read the dataset's samples of shape \[8\]") as err:
        run_search(cfg)
    assert "\n" not in str(err.value)
    assert not Path(cfg.paths.output_dir).exists()


def test_run_comparison_has_no_cell_to_draw_for_an_mlp_genotype(tmp_path):
    from types import SimpleNamespace

    from federated_nas.tracking.compare import download_genotype

    path = MLPGenotype(["linear", "skip_connect"]).save(tmp_path / "genotype.json")

    class Store:  # the two MlflowClient calls download_genotype makes
        def list_artifacts(self, run_id):
            return [SimpleNamespace(path="genotype.json")]

        def download_artifacts(self, run_id, artifact, directory):
            return str(path)

    assert download_genotype(Store(), "0123abcd", "mlp-run") is None
