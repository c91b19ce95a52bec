"""SLURM sweeps on a real SLURM (`make test-slurm` brings one up), and the launcher's job results.

The tests marked ``needs_slurm`` submit real jobs; they run only under scripts/slurm_local.sh, which
sets FEDNAS_SLURM_TESTS=1 and SLURM_CONF, because `make test` must not wait on a scheduler.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from federated_nas.federation.checkpoint import LAST, load_latest_checkpoint
from federated_nas.federation.distributed.worker import KILL_WORKER_HOOK
from federated_nas.runs import run_search
from helpers import ROOT, TINY, assert_same_states

needs_slurm = pytest.mark.skipif(
    os.environ.get("FEDNAS_SLURM_TESTS") != "1" or shutil.which("sbatch") is None,
    reason="needs a running SLURM: `make test-slurm` brings one up and runs these")
# small jobs that fit the 4 CPUs scripts/slurm_local.sh declares; no GPUs
JOB = ["hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
       "hydra.launcher.timeout_min=10", "trainer.accelerator=cpu"]
DISTRIBUTED = ["cluster=slurm_distributed", "hydra.launcher.gpus_per_task=null",
               "cluster.backend.worker_timeout_seconds=120", *JOB]


def sweep_command(log_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "src" / "search.py"), "-m", *TINY, f"paths.log_dir={log_dir}", *overrides]


def quiet_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(extra or {})}


def sweep(log_dir: Path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(log_dir, *overrides), capture_output=True, text=True, env=quiet_env(env),
                          timeout=420)


@needs_slurm
def test_a_bad_job_fails_alone_in_a_real_slurm_sweep(tmp_path):
    finished = sweep(tmp_path, "cluster=slurm", "hydra.launcher.gpus_per_node=0", *JOB, "logger=mlflow",
                     "federation.rounds=1", "partition.alpha=0.5,-1,1.0")
    assert finished.returncode != 0
    assert "partition.alpha must be a number > 0, got -1" in finished.stderr
    done = sorted(tmp_path.glob("search/multiruns/*/*/FINISHED"))
    assert {OmegaConf.load(p.parent / "config.yaml").partition.alpha for p in done} == {0.5, 1.0}
    (bad_log,) = [p for p in tmp_path.glob("search/multiruns/*/*/search.log") if "got -1" in p.read_text()]
    assert "error: sweep job 1" in bad_log.read_text()  # the line is in the bad job's own log
    assert len(list(tmp_path.glob("search/multiruns/*/.submitit/*_0/*_0_log.out"))) == 1  # one SLURM array
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("search").experiment_id])
    jobs = [run for run in runs if "mlflow.parentRunId" in run.data.tags]  # the sweep's parent run aside
    assert sorted(run.info.status for run in jobs) == ["FINISHED", "FINISHED"]  # jobs started together, one store
    assert len({run.data.tags["mlflow.parentRunId"] for run in jobs}) == 1 and len(runs) == 3


@needs_slurm
def test_a_sweep_killed_on_slurm_is_finished_by_resume_true(tmp_path):
    """Each job of the new sweep continues its own killed run (before: none was found, every job failed).

    40 rounds so that the faster job is still running when the other writes its first checkpoint: SLURM may start
    them seconds apart, and at 8 rounds one job had finished first (a CI failure)."""
    overrides = ["cluster=slurm", "hydra.launcher.gpus_per_node=0", *JOB, "logger=none", "federation.rounds=40",
                 "seed=0,1"]
    victim = subprocess.Popen(sweep_command(tmp_path, *overrides), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=quiet_env())
    deadline = time.time() + 240
    while len(list(tmp_path.glob(f"search/multiruns/*/*/checkpoints/{LAST}"))) < 2:
        assert victim.poll() is None and time.time() < deadline, "the sweep ended before both jobs checkpointed"
        time.sleep(0.1)
    victim.kill()
    victim.wait()
    subprocess.run(["scancel", f"--user={pwd.getpwuid(os.getuid()).pw_name}"], check=True)  # a private cluster
    while subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=True).stdout.strip():
        assert time.time() < deadline + 60, "scancel left jobs in the queue"
        time.sleep(0.5)
    killed = {OmegaConf.load(p.parent.parent / "config.yaml").seed: p.parent.parent
              for p in tmp_path.glob(f"search/multiruns/*/*/checkpoints/{LAST}")}
    assert sorted(killed) == [0, 1] and not any((run / "FINISHED").exists() for run in killed.values())

    finished = sweep(tmp_path, *overrides, "resume=true")
    assert finished.returncode == 0, finished.stderr[-3000:]
    for seed, run in killed.items():
        assert (run / "FINISHED").exists() and load_latest_checkpoint(run / "checkpoints")["round"] == 40, seed
    assert len(list(tmp_path.glob(f"search/multiruns/*/*/checkpoints/{LAST}"))) == 2  # no new runs


@needs_slurm
def test_sigterm_then_requeue_on_slurm_ends_bit_equal_to_an_uninterrupted_run(tiny_cfg, tmp_path):
    """`scancel --signal=TERM`: the job stops after a round's checkpoint and requeues itself; the requeued job
    continues its own run (same dir, no resume=) and ends with the model of a run never stopped."""
    rounds = ["federation.rounds=30", "logger=none"]
    local = run_search(tiny_cfg("search", rounds))
    expected = load_latest_checkpoint(Path(local["run_dir"]) / "checkpoints")["model"]
    job = subprocess.Popen(sweep_command(tmp_path, "cluster=slurm", "hydra.launcher.gpus_per_node=0", *JOB, *rounds),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=quiet_env())
    deadline = time.time() + 240
    while not list(tmp_path.glob(f"search/multiruns/*/0/checkpoints/{LAST}")):
        assert job.poll() is None and time.time() < deadline, "the job ended before its first checkpoint"
        time.sleep(0.1)
    (job_id,) = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout.split()
    subprocess.run(["scancel", "--signal=TERM", job_id], check=True)
    _, stderr = job.communicate(timeout=400)
    assert job.returncode == 0, stderr[-3000:]
    (run,) = tmp_path.glob(f"search/multiruns/*/0/checkpoints/{LAST}")
    log = (run.parent.parent / "search.log").read_text()
    assert "SIGTERM received" in log and "requeued SLURM job" in log and "SLURM requeued this job (restart 1)" in log
    finished = load_latest_checkpoint(run.parent)
    assert finished["round"] == 30 and (run.parent.parent / "FINISHED").exists()
    assert_same_states(expected, finished["model"])


@needs_slurm
def test_one_job_of_two_tasks_reaches_the_model_of_cluster_local(tiny_cfg, tmp_path):
    local = run_search(tiny_cfg("search", ["logger=none"]))
    expected = load_latest_checkpoint(Path(local["run_dir"]) / "checkpoints")["model"]
    finished = sweep(tmp_path, *DISTRIBUTED, "hydra.launcher.tasks_per_node=2", "logger=none")
    assert finished.returncode == 0, finished.stderr[-3000:]
    (run,) = tmp_path.glob(f"search/multiruns/*/0/checkpoints/{LAST}")
    distributed = load_latest_checkpoint(run.parent)
    assert [h["responders"] for h in distributed["history"]] == [3, 3]
    assert_same_states(expected, distributed["model"])


@needs_slurm
def test_a_killed_worker_task_leaves_the_server_to_finish_and_the_job_succeeds(tmp_path):
    """Before: the launcher waited for the dead task's result and the sweep exited 1 (UncompletedJobError)."""
    finished = sweep(tmp_path, *DISTRIBUTED, "hydra.launcher.tasks_per_node=3", "logger=none", "federation.rounds=3",
                     env={KILL_WORKER_HOOK: "2:1"})  # worker 2 SIGKILLs itself on receiving round 1
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "UncompletedJobError" not in finished.stderr
    (run,) = tmp_path.glob("search/multiruns/*/0/FINISHED")
    history = load_latest_checkpoint(run.parent / "checkpoints")["history"]
    assert [h["responders"] for h in history] == [3, 2, 3]  # SLURM left the other tasks running
    assert all(reason.startswith("worker 2 died") for reason in history[1]["failures"].values())


class FakeTask:
    def __init__(self, result=None):
        self._result = result

    def result(self):
        if self._result is None:  # what submitit raises for a task that left no result pickle
            from submitit.core.utils import UncompletedJobError

            raise UncompletedJobError("Job 7 (task: 2) has not produced any output")
        return self._result


class FakeJob:
    """A 3-task SLURM job whose task 2 died: submitit's ``results()`` reads every task."""

    def __init__(self, number):
        self.tasks = [FakeTask(f"server result {number}"), FakeTask(f"worker result {number}"), FakeTask()]

    def task(self, task_id):
        return self.tasks[task_id]

    def results(self):
        return [task.result() for task in self.tasks]


class FakeExecutor:
    """Records what a launcher asks of submitit; each job it returns has a dead task 2."""

    made: list["FakeExecutor"] = []

    def __init__(self, cluster, **init):
        self.cluster, self.init, self.parameters = cluster, init, {}
        FakeExecutor.made.append(self)

    def update_parameters(self, **parameters):
        self.parameters.update(parameters)

    def map_array(self, fn, *arguments):
        self.arguments = arguments
        return [FakeJob(number) for number in arguments[2]]


def test_the_distributed_launcher_takes_task_0s_result_and_submits_as_the_stock_one(tmp_path, monkeypatch):
    import submitit
    from hydra.utils import get_class
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    from submitit.core.utils import UncompletedJobError

    target = OmegaConf.load(ROOT / "configs" / "cluster" / "slurm_distributed.yaml").hydra.launcher._target_
    ours = get_class(target)
    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    params = {"submitit_folder": str(tmp_path / ".submitit/%j"), "timeout_min": 10, "tasks_per_node": 3, "nodes": 1,
              "cpus_per_task": 1, "mem_gb": 1, "gpus_per_task": None, "partition": "debug", "max_num_timeout": 0,
              "setup": None, "name": "search"}
    launchers = [ours(**params), SlurmLauncher(**params)]
    for launcher in launchers:
        launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})  # all it reads
    assert launchers[0].launch([["seed=0"], ["seed=1"]], initial_job_idx=0) == ["server result 0",
                                                                               "server result 1"]
    with pytest.raises(UncompletedJobError, match="task: 2"):  # before: the stock launcher's answer
        launchers[1].launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    mine, stock = FakeExecutor.made[-2:]
    assert (mine.cluster, mine.init, mine.parameters) == (stock.cluster, stock.init, stock.parameters)
    # overrides, dir key, job numbers, job ids (the last, Hydra's singletons, are equal copies)
    assert [list(a) for a in mine.arguments[:4]] == [list(a) for a in stock.arguments[:4]]


def test_a_local_run_on_a_machine_with_srun_does_not_warn_about_srun(tiny_cfg, tmp_path, monkeypatch):
    """Before: Lightning's SLURM autodetect warned "srun is available but not used" on every local run."""
    import warnings

    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert shutil.which("srun") == str(fake)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_search(tiny_cfg("search", ["logger=none", "federation.rounds=1", "cluster=local"]))
    assert Path(result["run_dir"], "FINISHED").exists()
    assert [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "srun" in str(w.message)] == []
