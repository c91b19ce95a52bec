"""A default run prints nothing its user cannot act on: no library chatter from MLflow or Lightning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# what runs printed before: MLflow's store set-up, its experiment creation (twice), its system-metrics monitor
# and its pickle warning; Lightning's batch-size guess and sync_dist advice from every client worker
CHATTER = ("INFO mlflow", "not found. Creating it", "Pickle", "batch_size", "sync_dist", "Warning")


def test_a_default_search_prints_only_its_own_lines(tmp_path):
    """The default command (cluster=auto: client workers, MLflow on a new SQLite store) on a tiny synthetic task."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "src" / "search.py"), "dataset=synthetic", "federation.num_clients=3",
         "federation.rounds=2", "federation.local_batches=2", "plots_every=null", f"paths.root_dir={tmp_path}",
         f"paths.output_dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "run finished" in output and "workers joined" in output  # the workers ran: their output counts too
    printed = [line for line in output.splitlines() if any(phrase in line for phrase in CHATTER)]
    assert printed == [], "\n".join(printed)
