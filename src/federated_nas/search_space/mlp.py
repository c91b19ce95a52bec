"""A searchable MLP for vector data: a chain of mixed layers of one width.

Why a chain: for tabular data the useful choices are per layer (how much non-linearity, or
none at all), so each searchable layer is one DARTS-style mixed op over ``MLP_PRIMITIVES``:
``sum_k w_k op_k(x)`` with ``w = relaxation(alpha_layers[layer])``, the same relaxation objects
as the CNN space (softmax for FedNAS, Gumbel-softmax for FedMetaNAS). ``skip_connect`` lets the
search drop a layer, so depth is searched too. A linear stem maps the features to ``hidden``
and a linear classifier reads the last layer.

Every layer's output is normalised (an affine-free LayerNorm), the role DARTS' affine-free
BatchNorm plays in its ops: a softmax-weighted sum of six ops shrinks the signal by about the
op count per layer, and without it the supernet barely trains (measured on digits: 10% vs 93%
test accuracy after 100 SGD steps). LayerNorm, unlike BatchNorm, needs no batch statistics,
so non-IID clients and one-sample evaluation see the same function.

The genotype is the chosen op of each layer (``MLPGenotype``); like DARTS, ``none`` is never
chosen, since a zero layer would cut the chain.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from federated_nas.errors import ConfigError, DataError
from federated_nas.models.budget import sized
from federated_nas.search_space.architecture import MASKED, RelaxedArchitecture
from federated_nas.search_space.genotypes import ArchitectureRecord
from federated_nas.search_space.relaxations import SoftmaxRelaxation

MLP_PRIMITIVES = ("none", "skip_connect", "linear", "linear_relu", "linear_tanh", "mlp2")
LAYER_KIND = "layers"


def make_mlp_op(name: str, width: int) -> nn.Module:
    """One candidate op of a layer; every op maps ``width`` features to ``width`` features."""
    if name == "skip_connect":
        return nn.Identity()
    if name == "linear":
        return nn.Linear(width, width)
    if name == "linear_relu":
        return nn.Sequential(nn.Linear(width, width), nn.ReLU())
    if name == "linear_tanh":
        return nn.Sequential(nn.Linear(width, width), nn.Tanh())
    if name == "mlp2":
        return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
    raise ConfigError(f"unknown MLP operation {name!r}; known: {', '.join(MLP_PRIMITIVES)}")


@dataclass(frozen=True)
class MLPGenotype(ArchitectureRecord):
    """The chosen op of every layer, saved as ``{"layers": [op, ...]}`` in genotype.json."""

    layers: list[str]
    kind = "MLP genotype"  # a class attribute (no annotation), not a field

    def count(self, op: str) -> int:
        return sum(name == op for name in self.layers)

    @classmethod
    def from_dict(cls, data: dict) -> "MLPGenotype":
        layers = data.get("layers") if isinstance(data, dict) else None
        if not isinstance(layers, list) or any(name not in MLP_PRIMITIVES for name in layers):
            raise DataError(f"not an MLP genotype (need layers: a list of {', '.join(MLP_PRIMITIVES)}): {data}")
        return cls([str(name) for name in layers])


def random_mlp_genotype(seed: int, layers: int) -> MLPGenotype:
    """A uniformly random MLP of the space: each layer's op drawn from the primitives without ``none``
    (as a derived genotype never has it), with Python's generator seeded here."""
    draw = random.Random(seed)
    return MLPGenotype([draw.choice([op for op in MLP_PRIMITIVES if op != "none"]) for _ in range(layers)])


def layer_norm(width: int) -> nn.LayerNorm:
    """What follows every layer: normalisation without parameters (see the module docstring)."""
    return nn.LayerNorm(width, elementwise_affine=False)


class MixedLayer(nn.Module):
    """The weighted sum of a layer's live ops, normalised; ``none`` is never computed (its term is zero)."""

    def __init__(self, width: int, primitives=MLP_PRIMITIVES):
        super().__init__()
        self.primitives = tuple(primitives)
        self.ops = nn.ModuleDict({name: make_mlp_op(name, width) for name in self.primitives if name != "none"})
        self.norm = layer_norm(width)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, skip_zero: bool = False) -> torch.Tensor:
        return self.norm(self.mixed(x, weights, skip_zero))

    def mixed(self, x: torch.Tensor, weights: torch.Tensor, skip_zero: bool = False) -> torch.Tensor:
        """``sum_k weights[k] op_k(x)``; ``skip_zero``: ops of weight exactly 0 (one-hot relaxations) are skipped."""
        live = weights.detach().ne(0).cpu() if skip_zero else None
        total = None
        for k, name in enumerate(self.primitives):
            if name not in self.ops or (live is not None and not live[k]):
                continue
            term = weights[k] * self.ops[name](x)
            total = term if total is None else total + term
        return x * 0 if total is None else total  # every op removed: the layer outputs zeros

    def prune(self, active: torch.Tensor) -> None:
        """Drop the modules of the ops that ``active`` marks False (their weights leave the model)."""
        for k, name in enumerate(self.primitives):
            if name in self.ops and not bool(active[k]):
                del self.ops[name]


class MLPSearchNetwork(RelaxedArchitecture, nn.Module):
    """Stem ``Linear(features, hidden)``, ``layers`` mixed layers, ``Linear(hidden, classes)``.

    ``in_channels`` is the number of input features (the name every model builder takes).
    ``input_combinations`` is FedMetaNAS' choice among k-combinations of a node's inputs (its
    Eq. 8); a chain layer has exactly one input, so there is nothing to choose: the argument
    is accepted, so FedMetaNAS' config runs unchanged on this space, and has no effect.
    """

    arch_kinds = (LAYER_KIND,)
    input_ndim = 1

    def __init__(self, in_channels: int, num_classes: int = 10, hidden: int = 64, layers: int = 3,
                 primitives=MLP_PRIMITIVES, relaxation: nn.Module | None = None,
                 input_combinations: int | None = None):
        super().__init__()
        if layers < 1 or hidden < 1 or in_channels < 1:
            raise ConfigError(f"search_space=mlp needs layers >= 1, hidden >= 1 and features >= 1, got "
                              f"layers={layers}, hidden={hidden}, features={in_channels}")
        self.primitives = tuple(primitives)
        if not any(name != "none" for name in self.primitives):
            raise ConfigError(f"search_space.primitives needs an op other than none, got {list(self.primitives)}")
        self.relaxation = relaxation if relaxation is not None else SoftmaxRelaxation()
        self.network_shape = dict(in_channels=in_channels, num_classes=num_classes, hidden=hidden)
        self.stem = nn.Linear(in_channels, hidden)
        self.layers = nn.ModuleList(MixedLayer(hidden, self.primitives) for _ in range(layers))
        self.classifier = nn.Linear(hidden, num_classes)
        self.alpha_layers = nn.Parameter(1e-3 * torch.randn(layers, len(self.primitives)))
        self.register_buffer("op_mask_layers", torch.ones(layers, len(self.primitives), dtype=torch.bool))

    def op_weights(self, deterministic: bool = False) -> torch.Tensor:
        """``[layers, ops]`` relaxed weights of the live ops."""
        return self._relax(self.alpha_layers, self.op_mask_layers, deterministic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.op_weights()
        skip_zero = getattr(self.relaxation, "one_hot", False)  # a sampled child: compute its ops alone
        x = self.stem(x)
        for layer, layer_weights in zip(self.layers, weights):
            x = layer(x, layer_weights, skip_zero)
        return self.classifier(x)

    # --- architecture ------------------------------------------------------------------------
    def genotype(self) -> MLPGenotype:
        """Each layer's strongest live op other than ``none`` (ties: the earlier primitive)."""
        live = self.alpha_layers.detach().masked_fill(~self.op_mask_layers, MASKED)
        not_none = torch.tensor([name != "none" for name in self.primitives], device=live.device)
        best = live.masked_fill(~not_none, 2 * MASKED).argmax(1)
        return MLPGenotype([self.primitives[int(k)] for k in best])

    def derived_network(self) -> "GenotypeMLP":
        """The discrete network of the current genotype at this supernet's size (fresh weights)."""
        return GenotypeMLP(self.genotype(), **self.network_shape)

    # --- pruning -----------------------------------------------------------------------------
    def prune_to(self, masks: dict[str, torch.Tensor]) -> None:
        """Adopt the given masks (never reviving a removed op) and drop the removed ops' modules."""
        self.adopt_masks(masks)
        for layer, active in zip(self.layers, self.op_mask_layers):
            layer.prune(active)

    def prune(self, threshold: float) -> dict[str, int]:
        """Remove every op whose deterministic weight is under ``threshold``; the genotype's ops stay."""
        kept = self.kept_ops(LAYER_KIND, threshold)
        removed = int((self.op_mask_layers & ~kept).sum())
        self.prune_to({"op_mask_layers": kept})
        return {"ops": removed, "combinations": 0}

    def discretized(self) -> "MLPSearchNetwork":
        """A copy keeping only the genotype's op in every layer, with this network's trained weights."""
        discrete = copy.deepcopy(self)
        mask = torch.zeros_like(self.op_mask_layers)
        for layer, name in enumerate(self.genotype().layers):
            mask[layer, self.primitives.index(name)] = True
        discrete.prune_to({"op_mask_layers": mask})
        return discrete


class GenotypeMLP(nn.Module):
    """The discrete MLP a genotype describes: stem, one chosen op per layer (normalised), classifier."""

    def __init__(self, genotype: MLPGenotype | dict | str | Path, in_channels: int, num_classes: int = 10,
                 hidden: int = 64):
        super().__init__()
        if genotype is None:
            raise ConfigError("an MLP genotype network needs model.genotype=<genotype.json>")
        if isinstance(genotype, (str, Path)):
            genotype = MLPGenotype.load(genotype)
        elif not isinstance(genotype, MLPGenotype):
            genotype = MLPGenotype.from_dict(dict(genotype))
        self.genotype = genotype
        self.stem = nn.Linear(in_channels, hidden)
        self.layers = nn.ModuleList(nn.Sequential(make_mlp_op(name, hidden), layer_norm(hidden))
                                    for name in genotype.layers)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(x)


def genotype_mlp(genotype: MLPGenotype | dict | str | Path | None, in_channels: int, num_classes: int = 10,
                 hidden: int = 64, layers: int = 3, genotype_seed: int = 0,
                 budget_params: int | None = None) -> GenotypeMLP:
    """The ``model=mlp_genotype`` network: a searched genotype, or ``random`` (``layers`` ops drawn with
    ``genotype_seed``); with ``budget_params``, ``hidden`` is chosen to meet that parameter count."""
    if genotype == "random":
        genotype = random_mlp_genotype(int(genotype_seed), layers)

    def build(width: int) -> GenotypeMLP:
        return GenotypeMLP(genotype, in_channels, num_classes, width)

    return sized(build, hidden, budget_params, "the genotype MLP", "hidden")
