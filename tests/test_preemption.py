"""Stopping on SIGTERM / SIGINT: checkpoint kept, MLflow run KILLED, exit 128 + signal, resume bit-equal.

The signals are real (``os.kill`` on this process), sent at the points a scheduler or a user would: between
rounds, and inside a client's Lightning fit. The SLURM requeue is tested on the real cluster in test_slurm.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from federated_nas.errors import RunStopped
from federated_nas.federation import server
from federated_nas.federation.checkpoint import load_latest_checkpoint
from federated_nas.federation.preemption import StopSignals, slurm_job_id
from federated_nas.runs import resolve_run_dir, run_search
from helpers import ROOT, assert_same_checkpoints

ROUNDS = ["federation.rounds=3"]


def test_sigint_between_rounds_stops_after_the_checkpoint_and_resumes_bit_equal(tiny_cfg, monkeypatch):
    handler_before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    straight = run_search(tiny_cfg("search", ROUNDS, run="straight"))
    real_record = server.FederatedRun._record

    def interrupted_after_first_round(self, round_idx, metrics):
        real_record(self, round_idx, metrics)
        if round_idx == 0:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while round 1 is being recorded

    monkeypatch.setattr(server.FederatedRun, "_record", interrupted_after_first_round)
    cfg = tiny_cfg("search", ROUNDS, run="stopped")
    with pytest.raises(RunStopped) as stopped:
        run_search(cfg)
    assert stopped.value.exit_code == 130 and stopped.value.rounds_done == 1
    run_dir = Path(stopped.value.run_dir)
    checkpoint = load_latest_checkpoint(run_dir / "checkpoints")
    assert checkpoint["round"] == 1 and not (run_dir / "FINISHED").exists()
    run = MlflowClient(cfg.logger.tracking_uri).get_run(checkpoint["mlflow_run_id"])
    assert run.info.status == "KILLED"  # not RUNNING forever
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handlers are given back
    monkeypatch.setattr(server.FederatedRun, "_record", real_record)
    resumed = run_search(tiny_cfg("search", [*ROUNDS, f"resume={run_dir}"], run="resumed"))
    assert_same_checkpoints(straight, resumed)
    assert MlflowClient(cfg.logger.tracking_uri).get_run(checkpoint["mlflow_run_id"]).info.status == "FINISHED"


def test_sigterm_inside_a_client_fit_abandons_the_round_and_resumes_bit_equal(tiny_cfg, monkeypatch):
    """SIGTERM during round 2's first client: Lightning ends the fit, the run keeps round 1's checkpoint."""
    from federated_nas.algorithms.core.local_module import LocalModule

    overrides = [*ROUNDS, "algorithm=fednas", "logger=none"]
    straight = run_search(tiny_cfg("search", overrides, run="straight"))
    real_step = LocalModule.training_step
    calls = []

    def terminated_in_round_two(self, batch, batch_idx):
        calls.append(batch_idx)
        if len(calls) == 3 * 2 + 1:  # 3 clients x 2 batches in round 1, then round 2's first batch
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(LocalModule, "training_step", terminated_in_round_two)
    with pytest.raises(RunStopped) as stopped:
        run_search(tiny_cfg("search", overrides, run="stopped"))
    assert stopped.value.exit_code == 143 and stopped.value.rounds_done == 1
    assert load_latest_checkpoint(Path(stopped.value.run_dir) / "checkpoints")["round"] == 1
    monkeypatch.setattr(LocalModule, "training_step", real_step)
    resumed = run_search(tiny_cfg("search", [*overrides, f"resume={stopped.value.run_dir}"], run="resumed"))
    assert_same_checkpoints(straight, resumed)


def test_a_requeued_slurm_job_continues_its_own_run(tiny_cfg, monkeypatch):
    """SLURM_RESTART_COUNT > 0 and a checkpoint in the job's own output dir: resumed, no resume= needed."""
    cfg = tiny_cfg("search", ["logger=none", "federation.rounds=1"], run="job")
    first = run_search(cfg)
    (Path(first["run_dir"]) / "FINISHED").unlink()  # as if killed after its checkpoint
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    run_dir, checkpoint = resolve_run_dir(cfg)
    assert run_dir == Path(first["run_dir"]) and checkpoint["round"] == 1
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert resolve_run_dir(cfg)[1] is None  # a first start never picks up a stale checkpoint
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "41")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job_id() == "41_3"


def test_a_second_ctrl_c_stops_at_once():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_the_command_exits_with_128_plus_the_signal(tmp_path):
    """The entry point: one line on stderr, exit status 143, the run dir kept with its checkpoint."""
    script = f"""
import os, signal, sys
sys.argv = ["search.py", "dataset=synthetic", "federation.num_clients=3", "federation.rounds=3",
            "federation.local_batches=1", "federation.batch_size=8", "partition.min_client_size=5", "cluster=local",
            "logger=none", "plots_every=null", "paths.root_dir={tmp_path}", "hydra.run.dir={tmp_path}/run"]
from federated_nas.federation import server
real = server.FederatedRun._record
def record(self, round_idx, metrics):
    real(self, round_idx, metrics)
    if round_idx == 0:
        os.kill(os.getpid(), signal.SIGTERM)
server.FederatedRun._record = record
sys.path.insert(0, {str(ROOT / 'src')!r})
import runpy
runpy.run_path({str(ROOT / 'src' / 'search.py')!r}, run_name="__main__")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 143, result.stderr[-2000:]
    assert "stopped: stopped by SIGTERM after round 1" in result.stderr
    assert load_latest_checkpoint(tmp_path / "run" / "checkpoints")["round"] == 1
