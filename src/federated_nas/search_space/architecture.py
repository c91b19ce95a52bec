"""What every relaxed supernet shares, whatever its layers (DARTS cells, an MLP chain).

A supernet has one or more *kinds* of choice points (``arch_kinds``: DARTS' normal and reduce
cells, the MLP's layers). Kind ``k`` has logits ``alpha_<k>`` (one row per choice point, one
column per primitive) and a boolean buffer ``op_mask_<k>`` of the ops still present, so a
pruned state dict carries its own structure. The search methods, the loop and the tracking
only use this surface; the subclass builds the layers and says how a mask removes modules
(``prune_to``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from federated_nas.search_space.relaxations import one_hot_argmax

MASKED = -1e9  # logit of a removed choice: exactly zero weight after any softmax that has a live choice


class RelaxedArchitecture:
    """Mixin for an ``nn.Module`` supernet; the subclass sets ``arch_kinds``, ``primitives``, ``relaxation``."""

    arch_kinds: tuple[str, ...] = ()
    input_ndim: int | None = None  # dimensions of one input sample: 3 for [C, H, W] images, 1 for vectors
    primitives: tuple[str, ...]
    relaxation: nn.Module

    def arch_parameters(self) -> list[nn.Parameter]:
        return [getattr(self, f"alpha_{kind}") for kind in self.arch_kinds]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def _relax(self, logits: torch.Tensor, mask: torch.Tensor, deterministic: bool, kind: str | None = None
               ) -> torch.Tensor:
        """``kind``: which choice points these are, for relaxations that hold per-kind weights (``by_kind``)."""
        masked = logits.masked_fill(~mask, MASKED)
        if deterministic:
            weights = self.relaxation.probabilities(masked)
        elif getattr(self.relaxation, "by_kind", False):
            weights = self.relaxation(masked, kind)
        else:
            weights = self.relaxation(masked)
        return weights * mask

    def op_distribution(self, kind: str) -> torch.Tensor:
        """``[choice points, ops]`` softmax of the live ops' logits, whatever the relaxation and its temperature:
        the distribution alpha defines (its entropy; FedRLNAS' sampling). Removed ops have probability exactly 0."""
        alpha, mask = getattr(self, f"alpha_{kind}").detach(), getattr(self, f"op_mask_{kind}")
        return torch.softmax(alpha.masked_fill(~mask, MASKED), dim=-1) * mask

    def op_probabilities(self, kind: str) -> torch.Tensor:
        """``[choice points, ops]`` deterministic op distribution (what heatmaps and pruning read)."""
        return self._relax(getattr(self, f"alpha_{kind}"), getattr(self, f"op_mask_{kind}"), True).detach()

    def kept_ops(self, kind: str, threshold: float) -> torch.Tensor:
        """The op mask after removing ops under ``threshold``; each row's strongest non-none op always stays."""
        mask = getattr(self, f"op_mask_{kind}")
        weights = self._relax(getattr(self, f"alpha_{kind}"), mask, True).detach()
        keep = weights >= threshold
        not_none = torch.tensor([name != "none" for name in self.primitives], device=weights.device)
        best = weights.masked_fill(~not_none, -1.0).argmax(1)
        keep[torch.arange(len(keep), device=keep.device), best] = True
        return mask & keep

    def masks(self) -> dict[str, torch.Tensor]:
        return {name: buf.clone() for name, buf in self.named_buffers() if "_mask_" in name and "." not in name}

    def adopt_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Narrow the ``*_mask_*`` buffers to ``masks``: a removed choice never comes back."""
        for name, mask in masks.items():
            buffer = getattr(self, name)
            buffer.copy_(buffer & mask.to(buffer.device, torch.bool))

    def prune_to(self, masks: dict[str, torch.Tensor]) -> None:
        """Adopt the masks (``adopt_masks``) and drop the removed ops' modules."""
        raise NotImplementedError

    def most_likely_child(self) -> nn.Module:
        """A copy keeping each choice point's most likely live op alone (``none`` included), with the trained weights.

        The final model of the single-path methods (FedDSNAS, FedRLNAS), which evaluate every choice
        point's argmax op rather than DARTS' two strongest inputs per node.
        """
        masks = self.masks()
        for kind in self.arch_kinds:
            live = getattr(self, f"alpha_{kind}").detach().masked_fill(~masks[f"op_mask_{kind}"], MASKED)
            masks[f"op_mask_{kind}"] = one_hot_argmax(live).bool()
        child = copy.deepcopy(self)
        child.prune_to(masks)
        return child

    def match_structure(self, state: dict[str, torch.Tensor]) -> None:
        """Prune this network to the structure a (pruned) state dict was saved from, before loading it."""
        self.prune_to({name: state[name] for name in self.masks() if name in state})
