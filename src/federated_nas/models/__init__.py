"""Fixed hand-designed networks for the fixed-architecture baselines (the ``model`` config group).

Every builder takes ``in_channels`` and ``num_classes`` (what FedAvg passes from the dataset)
plus its own options, and works at any image size down to 8x8: the classifier sits behind
adaptive pooling, so no builder needs the image size. For vector data ``in_channels`` is the feature count (``mlp``).

The builders are imported on first use: importing one submodule (``models.budget``, ``models.heads``)
does not import torchvision, which three of the builders need and a search run's start does not.
"""

from __future__ import annotations

import importlib
from typing import Any

_BUILDERS = {"densenet": "densenets", "mlp": "mlps", "mobilenet_v3": "mobilenet", "resnet18": "resnet",
             "small_cnn": "cnn"}
__all__ = sorted(_BUILDERS)


def __getattr__(name: str) -> Any:
    if name not in _BUILDERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_BUILDERS[name]}"), name)
