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


class GumbelSoftmaxRelaxation(nn.Module):
    """Z = softmax((alpha + G) / temperature), G ~ Gumbel(0, 1) in training; no noise in eval.

    ``alpha`` plays the role of log(alpha) in the FedMetaNAS paper's Eq. 7 (unnormalised log
    probabilities). The noise comes from torch's global generator, which the federated loop
    seeds per (run, round, client), so a Gumbel-sampled search reproduces.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.probabilities(logits)
        uniform = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
        return torch.softmax((logits - torch.log(-torch.log(uniform))) / self.temperature, dim=-1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """No noise: softmax(alpha / temperature)."""
        return torch.softmax(logits / self.temperature, dim=-1)


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
