"""What the supernet-search methods share: building the supernet, per-round architecture facts,
and the discrete model with inherited weights (the "after" column of FedMetaNAS' Table 3)."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from federated_nas.algorithms.base import FederatedAlgorithm, LocalModule, OptimizerFactory
from federated_nas.data.federated_data import FederatedData
from federated_nas.search_space.network import count_parameters
from federated_nas.search_space.supernet import SearchNetwork


class ArchitectureSearch(LocalModule):
    """A client's local search: one optimizer for the weights w, one for the architecture.

    Subclasses fill the gradients between ``zero_grads`` and ``step``; the step clips w's
    gradient (never alpha's) and moves both.
    """

    def __init__(self, model: SearchNetwork, w_optimizer: OptimizerFactory, alpha_optimizer: OptimizerFactory,
                 lr: float, grad_clip: float | None):
        super().__init__(model, w_optimizer, lr, grad_clip)
        self.alpha_optimizer = alpha_optimizer

    def configure_optimizers(self):
        return [self.w_optimizer(self.weight_parameters(), lr=self.lr),
                self.alpha_optimizer(self.model.arch_parameters())]

    def zero_grads(self) -> None:
        for optimizer in self.optimizers():
            optimizer.zero_grad()

    def step(self) -> None:
        w_opt, alpha_opt = self.optimizers()
        self.clip_weight_gradients(w_opt)
        w_opt.step()
        alpha_opt.step()


class SupernetAlgorithm(FederatedAlgorithm):
    """A federated method whose global model is a ``SearchNetwork``."""

    def __init__(self, search_space: Callable[..., SearchNetwork]):
        self.search_space = search_space
        self.input_shape: tuple[int, ...] = ()

    def supernet_options(self) -> dict[str, Any]:
        """Extra constructor arguments of this method's supernet (relaxation, input combinations)."""
        return {}

    def build_model(self, data: FederatedData) -> SearchNetwork:
        self.input_shape = (1, data.in_channels, data.image_size, data.image_size)
        return self.search_space(in_channels=data.in_channels, num_classes=data.num_classes,
                                 **self.supernet_options())

    def round_report(self, model: SearchNetwork) -> dict[str, Any]:
        genotype = model.genotype()
        report = {
            "genotype": genotype,
            "alpha_entropy": alpha_entropy(model),
            "skip_connect_count": genotype.count("skip_connect"),
            "derived_params": count_parameters(model.derived_network()),
            "supernet_params": count_parameters(model),
            # per edge and op, for the heatmap of the architecture over rounds (kept in the history)
            "alpha_probabilities": {"primitives": list(model.primitives),
                                    **{kind: model.op_probabilities(kind).cpu().tolist()
                                       for kind in ("normal", "reduce")}},
        }
        if self.input_shape:
            report["supernet_flops"] = forward_flops(model, self.input_shape)
        return report

    def discrete_model(self, model: SearchNetwork) -> SearchNetwork:
        return model.discretized()


def alpha_entropy(model: SearchNetwork) -> float:
    """Mean entropy (nats) of the live op distribution per edge: falls as the search commits."""
    entropies = []
    for kind in ("normal", "reduce"):
        alpha, mask = getattr(model, f"alpha_{kind}").detach(), getattr(model, f"op_mask_{kind}")
        p = F.softmax(alpha.masked_fill(~mask, -1e9), dim=-1) * mask
        entropies.append(-(p * p.clamp_min(1e-12).log()).sum(-1))
    return float(torch.cat(entropies).mean())


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
