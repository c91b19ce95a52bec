"""A full disk stops a run with one line, and leaves its last checkpoint and the MLflow store readable.

For real: the run's log dir is a small tmpfs, mounted where this process may mount (root, no container
seccomp refusal); elsewhere the test skips with one line saying so.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DISK_SIZE = "2m"  # a tiny run writes about 1 MB (store, checkpoints, figures) before its 3rd round ends


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)  # detached even while a file is open


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_what_was_written(small_disk):
    run_dir = small_disk / "run"
    run = subprocess.run(
        [sys.executable, str(ROOT / "src" / "search.py"), "dataset=synthetic", "federation.num_clients=3",
         "federation.rounds=40", "federation.local_batches=2", "cluster=local", f"paths.root_dir={small_disk}",
         f"paths.output_dir={run_dir}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert run.returncode == 1, run.stderr[-3000:]  # 40 rounds cannot fit: the disk filled
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1].startswith("error: disk full: ")
    # the last whole round's checkpoint loads, and names a round the run finished
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["round"] >= 1
    # the store answers queries
    with sqlite3.connect(small_disk / "logs" / "mlflow.db") as store:
        assert store.execute("select count(*) from runs").fetchone()[0] == 1
