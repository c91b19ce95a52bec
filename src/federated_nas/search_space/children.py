"""Discrete children of the supernet: sampling one op per edge, and which weights a child uses.

A child is ``{kind: LongTensor[edges]}``, the op index of every edge of the normal and the
reduction cell. FedRLNAS samples one per client and trains only its weights; the server then
averages each supernet entry over the clients whose child used it (``child_entry_masks``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from federated_nas.search_space.supernet import CELL_KINDS, SearchNetwork

Child = dict[str, torch.Tensor]


def sample_child(model: SearchNetwork, generator: torch.Generator | None = None) -> Child:
    """One op per edge drawn from the op distribution, with ``generator`` (torch's global CPU one if None).

    Drawn on the CPU so that the same seed gives the same child on any device.
    """
    return {kind: torch.multinomial(model.op_distribution(kind).cpu().double(), 1, generator=generator).squeeze(1)
            for kind in CELL_KINDS}


def argmax_child(model: SearchNetwork) -> Child:
    """The most likely op of every edge (ties: the first)."""
    return {kind: model.op_distribution(kind).argmax(-1).cpu() for kind in CELL_KINDS}


def one_hot_weights(model: SearchNetwork, child: Child) -> list[torch.Tensor]:
    """The child's ``[edges, ops]`` op weights, in the order the network relaxes its cell kinds."""
    alpha = model.alpha_normal
    return [F.one_hot(child[kind].long(), len(model.primitives)).to(alpha.device, alpha.dtype) for kind in CELL_KINDS]


def check_child(model: SearchNetwork, child: Child) -> None:
    """A child must pick one live op on every edge (pruned ops can never be sampled)."""
    for kind in CELL_KINDS:
        mask = getattr(model, f"op_mask_{kind}").cpu()
        ops = child[kind].long()
        if ops.shape != mask.shape[:1] or bool(((ops < 0) | (ops >= mask.shape[1])).any()) \
                or not bool(mask[torch.arange(len(ops)), ops].all()):
            raise ValueError(f"child {kind} {ops.tolist()} does not pick one live op per edge")


def child_entry_masks(model: SearchNetwork, child: Child) -> dict[str, torch.Tensor]:
    """Per state entry of the edge bundles' ops, whether the child uses it (True) or not.

    An op's grouped weights and BatchNorm channels hold one block per (source, edge) group, in
    the bundle's group order; a pooling BatchNorm holds one block per source, shared by that
    source's edges. Entries outside the bundles (stem, preprocessing, classifier) are used by
    every child and get no mask; architecture entries are not the clients' to train.
    """
    masks: dict[str, torch.Tensor] = {}
    for cell_index, cell in enumerate(model.cells):
        ops = child["reduce" if cell.reduction and not model.tie_cells else "normal"].long().cpu()
        for bundle_index, (bundle, rows) in enumerate(zip(cell.bundles, cell.bundle_rows())):
            prefix = f"cells.{cell_index}.bundles.{bundle_index}."
            picked = ops[rows.cpu()]  # [sources, edges]: the op index the child runs on each edge
            for k, name in enumerate(bundle.primitives):
                groups = getattr(bundle, f"groups_{k}").cpu()
                used_groups = (picked.flatten()[groups] == k) if len(groups) else torch.zeros(0, dtype=torch.bool)
                used_sources = (picked == k).any(1)  # pools: a source's block is used by any of its edges
                for key, tensor in _op_entries(bundle, name):
                    blocks = used_sources if name in ("max_pool_3x3", "avg_pool_3x3") else used_groups
                    masks[prefix + key] = _block_mask(tensor, blocks)
    return masks


def _op_entries(bundle, name: str) -> list[tuple[str, torch.Tensor]]:
    """(state key inside the bundle, tensor) of every entry that belongs to op ``name``."""
    owned = []
    for key, param in bundle.conv_params.items():
        if _owner(key) == name:
            owned.append((f"conv_params.{key}", param))
    for key, bn in bundle.bns.items():
        if _owner(key) == name:
            owned += [(f"bns.{key}.{buffer}", getattr(bn, buffer))
                      for buffer in ("running_mean", "running_var", "num_batches_tracked")]
    return owned


def _owner(key: str) -> str:
    """The op an edge-bundle entry belongs to: ``sep_conv_3x3_dw0`` -> ``sep_conv_3x3``, ``skip_a`` -> skip."""
    if key.startswith("skip_"):
        return "skip_connect"
    return key.rsplit("_", 1)[0] if key.rsplit("_", 1)[-1][:2] in ("dw", "pw", "bn") else key


def _block_mask(tensor: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Rows of ``tensor`` split into equal blocks, marked as their block is; a scalar counter: any block."""
    if tensor.dim() == 0:
        return blocks.any().reshape(())
    rows = tensor.shape[0] // max(len(blocks), 1)
    per_row = blocks.repeat_interleave(rows)
    return per_row.view(-1, *([1] * (tensor.dim() - 1))).expand(tensor.shape).clone()
