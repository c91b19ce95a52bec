"""Eight runs at once against one SQLite MLflow store: all finish, each recorded once, nothing lost.

SQLite takes one writer at a time (its documented locking: a writer waits on the database lock up to the
busy timeout); MLflow opens the store per process, and a new store's schema is created under
``store_lock``. Both ways a user starts many runs: independent processes, and a Hydra sweep through
submitit's local executor (one process per job, started together).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from helpers import ROOT, TINY

RUNS = 8
RUN = [*TINY, "logger=mlflow", "federation.rounds=2", "federation.local_batches=1"]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def assert_recorded_once(uri: str, seeds: list[int]) -> None:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("search").experiment_id])
    jobs = [run for run in runs if "seed" in run.data.params]
    assert sorted(int(run.data.params["seed"]) for run in jobs) == seeds  # each once
    for run in jobs:
        assert run.info.status == "FINISHED", run.info.run_name
        assert [m.step for m in client.get_metric_history(run.info.run_id, "test/acc")] == [1, 2]  # no round lost


@pytest.mark.stress
def test_independent_processes_share_one_store(tmp_path):
    jobs = [subprocess.Popen([sys.executable, str(ROOT / "src" / "search.py"), *RUN, f"seed={seed}",
                              f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/runs/{seed}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment())
            for seed in range(RUNS)]
    errors = [job.communicate(timeout=600)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * RUNS, [e[-500:] for e in errors if e]
    assert_recorded_once(f"sqlite:///{tmp_path}/mlflow.db", list(range(RUNS)))


@pytest.mark.stress
def test_a_submitit_local_sweep_shares_one_store(tmp_path):
    sweep = subprocess.run([sys.executable, str(ROOT / "src" / "search.py"), "-m", *RUN,
                            "hydra/launcher=submitit_local", f"hydra.launcher.tasks_per_node=1",
                            "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10",
                            f"seed={','.join(str(s) for s in range(RUNS))}", f"paths.log_dir={tmp_path}"],
                           capture_output=True, text=True, env=environment(), timeout=900)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert_recorded_once(f"sqlite:///{tmp_path}/mlflow.db", list(range(RUNS)))
