"""Fixes for library quirks and version skew, each aimed at one known call site (idempotent).

Lightning 2.x builds pytree leaf specs with ``LeafSpec()``, a constructor torch 2.14 deprecates
in favour of the ``treespec_leaf()`` factory (same singleton value). Every client fit goes
through that call in ``CombinedLoader``, so the FutureWarning would reach every user although
nothing of theirs is deprecated. Pointing Lightning's module at the factory removes the cause
instead of filtering warnings in bulk.
"""

from __future__ import annotations

import logging


def use_torch_leaf_factory_in_lightning() -> None:
    import torch.utils._pytree as torch_pytree
    from lightning.pytorch.utilities import _pytree as lightning_pytree

    factory = getattr(torch_pytree, "treespec_leaf", None)
    if factory is not None and getattr(lightning_pytree, "LeafSpec", None) is getattr(torch_pytree, "LeafSpec", None):
        lightning_pytree.LeafSpec = factory


def quiet_libraries() -> None:
    """Silence per-client Lightning banners at their logger (each client fit would print them)."""
    # the standalone pytorch_lightning / lightning_fabric names too: importing mlflow.pytorch loads them
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "pytorch_lightning", "lightning_fabric", "pytorch_lightning.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
