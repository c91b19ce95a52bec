"""A run's pictures, redrawn as it goes so the MLflow UI shows a long search while it runs.

Every ``every`` rounds and at the last round: the derived cells, the alpha heatmap over rounds
and the round curves. The cells go to MLflow as images keyed ``arch/normal_cell``/``arch/reduce_cell`` with
the round as step, so the UI browses the architecture's history with a slider, run beside run;
the other figures are artifacts, overwritten, as they always cover the whole history so far.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from federated_nas.search_space.genotypes import CELL_KINDS, Genotype
from federated_nas.tracking.mlflow_tracker import RunTracker
from federated_nas.tracking.run_record import curve_accuracy


def cell_image_key(kind: str) -> str:
    """The MLflow image key of a cell kind's drawings: in the UI's ``arch`` section, beside alpha's entropy."""
    return f"arch/{kind}_cell"


class RunFigures:
    """Draws from the loop's history after a round; ``every=0`` draws at the last round only."""

    def __init__(self, run_dir: str | Path, tracker: RunTracker, every: int = 5, run_name: str = ""):
        self.directory = Path(run_dir) / "figures"
        self.tracker, self.every, self.run_name = tracker, every, run_name

    def due(self, round_idx: int, rounds: int) -> bool:
        return round_idx == rounds - 1 or (self.every > 0 and (round_idx + 1) % self.every == 0)

    def after_round(self, round_idx: int, rounds: int, history: list[dict[str, Any]]) -> list[Path]:
        if not history or not self.due(round_idx, rounds):
            return []
        from federated_nas.tracking.cell_drawing import draw_genotype  # matplotlib: not before round 1
        from federated_nas.tracking.plots import plot_round_curves

        latest = history[-1]
        title = self._title(round_idx, latest)
        paths = [plot_round_curves(history, self.directory / "round_curves.png", title)]
        recorded = json.loads(latest["genotype"]) if latest.get("genotype") else {}
        cells = []
        if "normal" in recorded:  # DARTS cells are drawn; an MLP chain's genotype is its list of ops (logged)
            genotype = Genotype.from_dict(recorded)
            cells = draw_genotype(genotype, self.directory / "cells", stem=f"round_{round_idx + 1:03d}_",
                                  title=title)
            for kind, path in zip(CELL_KINDS, cells):
                self.tracker.log_image(path, key=cell_image_key(kind), step=round_idx + 1)
            if round_idx == rounds - 1:
                paths += draw_genotype(genotype, self.directory, title=title)
        paths += self._alpha_heatmaps(history, title)
        for path in paths:
            self.tracker.log_artifact(path, str(path.parent.relative_to(self.directory.parent)))
        return paths + cells

    def _title(self, round_idx: int, latest: dict[str, Any]) -> str:
        """``<run name> · round k · global acc x%``: a picture saved or shared alone still says what it shows."""
        parts = [self.run_name] if self.run_name else []
        parts.append(f"round {round_idx + 1}")
        accuracy = curve_accuracy(latest)
        if accuracy is not None:
            parts.append(f"global acc {100 * accuracy:.1f}%")
        return " · ".join(parts)

    def _alpha_heatmaps(self, history: list[dict[str, Any]], title: str) -> list[Path]:
        from federated_nas.tracking.plots import plot_alpha_evolution

        entries = [entry for entry in history if entry.get("alpha_probabilities")]
        if not entries:
            return []
        recorded = [entry["alpha_probabilities"] for entry in entries]
        rounds = [entry["round"] + 1 for entry in entries]  # the history counts rounds from 0
        primitives = recorded[-1]["primitives"]
        kinds = [kind for kind in recorded[-1] if kind != "primitives"]  # normal and reduce, or the MLP's layers
        return [plot_alpha_evolution(np.asarray([entry[kind] for entry in recorded]), primitives,
                                     self.directory / f"alpha_{kind}.png",
                                     f"{kind} cell: op probabilities per edge over rounds · {title}"
                                     if kind in CELL_KINDS else f"{kind}: op probabilities per layer · {title}",
                                     None if kind in CELL_KINDS else "layer", rounds)
                for kind in kinds]
