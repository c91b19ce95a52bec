"""Figures logged as run artifacts.

The "Agg" backend is selected before pyplot is imported because runs execute on
headless cluster nodes where no display exists.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
import numpy as np  # noqa: E402


def plot_partition_heatmap(
    counts: np.ndarray, path, title: str = "Samples per class and client"
) -> Path:
    """Heatmap of a [classes, clients] count table, to see at a glance how non-IID a split is."""
    counts = np.asarray(counts)
    path = Path(path)
    num_classes, num_clients = counts.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * num_clients + 2), max(3.0, 0.4 * num_classes + 1.5)))
    try:
        image = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, label="samples")
        ax.set_xlabel("client")
        ax.set_ylabel("class")
        ax.set_title(title)
        if num_classes <= 20 and num_clients <= 20:
            ax.set_xticks(range(num_clients))
            ax.set_yticks(range(num_classes))
            threshold = counts.max() / 2 if counts.size else 0
            for (row, column), value in np.ndenumerate(counts):
                color = "black" if value > threshold else "white"
                ax.text(column, row, str(int(value)), ha="center", va="center", fontsize=7, color=color)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        temp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # plain open keeps umask permissions
        try:
            fig.savefig(temp_path, format=path.suffix.lstrip(".") or "png", dpi=120)
            os.replace(temp_path, path)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise
    finally:
        plt.close(fig)
    return path
