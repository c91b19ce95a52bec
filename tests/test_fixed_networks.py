"""The hand-designed networks of the fixed-network methods: their sizes, their stems, their heads (the layer
FedRep and FedBABU keep apart), a 2-round run on ResNet-18, and the one error of a method without a network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from federated_nas.errors import ConfigError
from federated_nas.models import densenet, mobilenet_v3, resnet18, small_cnn
from federated_nas.models.heads import body_parameters, head_module_name, head_parameter_names, head_parameters
from federated_nas.runs import build, run_search
from federated_nas.search_space.genotypes import derive_genotype
from federated_nas.search_space.network import GenotypeNetwork, count_parameters

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


def test_two_round_run_on_resnet18_reports_its_size(tiny_cfg):
    overrides = ["algorithm=fedavg", "model=resnet18"]
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
