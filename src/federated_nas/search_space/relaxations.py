"""Continuous relaxations of a categorical architecture choice, and temperature schedules.

A relaxation is an ``nn.Module`` so that it follows ``model.train()``/``model.eval()``:
Gumbel noise is drawn in training only, and evaluation uses the deterministic weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SoftmaxRelaxation(nn.Module):
    """DARTS: a plain softmax over the last axis."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The deterministic weights (what evaluation and genotype derivation use)."""
        return torch.softmax(logits, dim=-1)


def gumbel_perturbed(logits: torch.Tensor) -> torch.Tensor:
    """alpha + G, G ~ Gumbel(0, 1) drawn from torch's global generator (seeded per run, round and client)."""
    uniform = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
    return logits - torch.log(-torch.log(uniform))


class TemperedSoftmaxRelaxation(nn.Module):
    """MetaNAS' tempered softmax: Z = softmax(alpha / temperature), the same in training and evaluation.

    No noise, so the network evaluated is the network trained (and its BatchNorm statistics fit it);
    annealing the temperature towards 0 still sharpens the mixture towards the argmax op.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.probabilities(logits)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The deterministic weights: softmax(alpha / temperature)."""
        return torch.softmax(logits / self.temperature, dim=-1)


class GumbelSoftmaxRelaxation(TemperedSoftmaxRelaxation):
    """Z = softmax((alpha + G) / temperature), G ~ Gumbel(0, 1) in training; no noise in eval.

    ``alpha`` plays the role of log(alpha) in the FedMetaNAS paper's Eq. 7 (unnormalised log
    probabilities). The noise comes from torch's global generator, which the federated loop
    seeds per (run, round, client), so a Gumbel-sampled search reproduces.
    """

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.probabilities(logits)
        return self.probabilities(gumbel_perturbed(logits))  # the tempered softmax of the perturbed logits


RELAXATIONS = {"softmax": TemperedSoftmaxRelaxation, "gumbel": GumbelSoftmaxRelaxation}


class HardGumbelRelaxation(GumbelSoftmaxRelaxation):
    """DSNAS: one op per edge sampled from softmax(alpha), forward weight exactly one-hot.

    In training the sampled op s = argmax(alpha + G) gets the weight ``y_s / y_s.detach()``
    with ``y = softmax((alpha + G) / temperature)``: its value is exactly 1 and its gradient is
    ``grad log y_s``, so dL/dalpha = dL/dZ_s * grad log y_s, DSNAS' credit assignment, which
    needs the output of the sampled op alone. Every other op has weight exactly 0 and no
    gradient, so the supernet may skip computing it (``one_hot``). In evaluation the weight is
    the one-hot of argmax(alpha): the most likely child, with no noise.

    ``tempered_sampling`` (not in DSNAS, where the temperature never changes what is sampled):
    s = argmax(alpha / temperature + G), a sample of softmax(alpha / temperature), with
    y = softmax(alpha / temperature + G), so the credit keeps DSNAS' form. Annealing the
    temperature then narrows the sampling towards the argmax child, which the late steps train.
    """

    one_hot = True

    def __init__(self, temperature: float = 1.0, tempered_sampling: bool = False):
        super().__init__(temperature)
        self.tempered_sampling = bool(tempered_sampling)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return one_hot_argmax(logits)
        if self.tempered_sampling:
            perturbed = gumbel_perturbed(logits / self.temperature)
            soft = torch.softmax(perturbed, dim=-1)
        else:
            perturbed = gumbel_perturbed(logits)
            soft = self.probabilities(perturbed)
        chosen = perturbed.argmax(-1, keepdim=True)
        soft_chosen = soft.gather(-1, chosen)
        return torch.zeros_like(logits).scatter(-1, chosen, 1.0) * (soft_chosen / soft_chosen.detach())


def one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Exact one-hot weights of the largest logit in each row."""
    return torch.zeros_like(logits).scatter(-1, logits.argmax(-1, keepdim=True), 1.0)


def anneal(start: float, end: float, round_idx: int, rounds: int, shape: str = "linear") -> float:
    """Temperature at a round: ``linear``, ``exponential`` (geometric) or ``cosine`` from start to end."""
    progress = min(max(round_idx / max(rounds - 1, 1), 0.0), 1.0)
    if shape == "linear":
        return start + (end - start) * progress
    if shape == "exponential":
        return start * (end / start) ** progress
    if shape == "cosine":
        return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"temperature schedule shape must be linear, exponential or cosine, got {shape!r}")


class ArgmaxChild(nn.Module):
    """The most likely child: one-hot of argmax(alpha) per edge, in training and evaluation alike.

    FedRLNAS' server model: its accuracy is that of the argmax child with the trained weights.
    ``probabilities`` stays the softmax, so reports and genotypes read the distribution.
    """

    one_hot = True

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return one_hot_argmax(logits)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)


class FixedChild(nn.Module):
    """A child sampled once and held fixed: the given one-hot op weights of each cell kind, whatever the logits.

    ``children`` maps a cell kind to its ``[edges, ops]`` weights (a list is taken in ``kinds`` order).
    The network passes the kind it relaxes (``by_kind``), so no call order is assumed: an extra call,
    or a forward pass that failed halfway, cannot swap the normal and the reduce child.
    """

    one_hot = True
    by_kind = True

    def __init__(self, children: dict[str, torch.Tensor] | list[torch.Tensor],
                 kinds: tuple[str, ...] = ("normal", "reduce")):
        super().__init__()
        if not isinstance(children, dict):
            children = dict(zip(kinds, children, strict=True))
        self.children_weights = {kind: child.detach() for kind, child in children.items()}

    def forward(self, logits: torch.Tensor, kind: str) -> torch.Tensor:
        child = self.children_weights[kind]
        if child.shape != logits.shape:
            raise ValueError(f"fixed {kind} child of shape {tuple(child.shape)} for logits of shape {tuple(logits.shape)}")
        return child.to(device=logits.device, dtype=logits.dtype)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)
