"""Faults: dropouts, deadlines, bad updates, too few responders, clipping, a killed server, sweeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from federated_nas.algorithms.core.aggregation import clip_update
from federated_nas.federation import backends
from federated_nas.federation.checkpoint import LAST, load_latest_checkpoint
from federated_nas.federation.server import RoundFailed, injected_dropouts
from federated_nas.runs import run_search
from helpers import ROOT, TINY, assert_same_states


def history_of(result) -> list[dict]:
    return load_latest_checkpoint(Path(result["run_dir"]) / "checkpoints")["history"]


def test_injected_dropouts_are_logged_and_the_run_goes_on(tiny_cfg):
    result = run_search(tiny_cfg("search", ["logger=none", "federation.rounds=3",
                                            "federation.dropout_probability=0.5"]))
    history = history_of(result)
    dropped = sum(h["dropped_clients"] for h in history)
    assert dropped > 0
    assert all(h["responders"] + h["dropped_clients"] == h["clients"] for h in history)
    assert any("injected dropout" in h["failures"].values() for h in history)
    assert torch.isfinite(torch.tensor(result["global_test_acc"]))
    payload = history[0]["bytes_received"] / history[0]["responders"]
    for h in history:  # a client failed by injection was sent nothing
        sent_to = h["clients"] - list(h["failures"].values()).count("injected dropout")
        assert h["bytes_sent"] == payload * sent_to


def test_dropouts_depend_only_on_seed_round_and_attempt():
    clients = list(range(50))
    first = injected_dropouts(0, 3, 0, clients, 0.5)
    assert first == injected_dropouts(0, 3, 0, clients, 0.5)
    assert first != injected_dropouts(0, 3, 1, clients, 0.5)
    assert 10 < len(first) < 40


def test_too_few_responders_is_retried_then_one_clear_error(tiny_cfg):
    # every client must answer, and half of them fail on purpose: no attempt can succeed
    cfg = tiny_cfg("search", ["logger=none", "federation.dropout_probability=0.9",
                              "federation.min_responders=3", "federation.max_round_attempts=2"])
    with pytest.raises(RoundFailed, match="min_responders=3 valid updates in 2 attempts"):
        run_search(cfg)


def corrupt_client(monkeypatch, client_id: int, how: str) -> None:
    """Make one client's local work return a NaN update or raise."""
    real = backends.LocalBackend._run_client

    def run_client(self, algorithm, global_state, task, *args):
        update = real(self, algorithm, global_state, task, *args)
        if task.client.client_id != client_id:
            return update
        if how == "raise":
            raise RuntimeError("simulated worker crash")
        first = next(k for k, v in update.state.items() if v.is_floating_point())
        update.state[first] = torch.full_like(update.state[first], float("nan"))
        return update

    monkeypatch.setattr(backends.LocalBackend, "_run_client", run_client)


@pytest.mark.parametrize("how, reason", [("nan", "rejected update"), ("raise", "simulated worker crash")])
def test_a_bad_or_crashing_client_is_left_out(tiny_cfg, monkeypatch, how, reason):
    corrupt_client(monkeypatch, client_id=1, how=how)
    result = run_search(tiny_cfg("search", ["logger=none"]))
    history = history_of(result)
    assert all(h["responders"] == 2 and reason in h["failures"]["1"] for h in history)
    model = load_latest_checkpoint(Path(result["run_dir"]) / "checkpoints")["model"]
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


def test_clients_past_the_deadline_are_left_out(tiny_cfg, monkeypatch):
    real = backends.LocalBackend._run_client

    def slow_client(self, *args):
        time.sleep(0.3)
        return real(self, *args)

    monkeypatch.setattr(backends.LocalBackend, "_run_client", slow_client)
    result = run_search(tiny_cfg("search", ["logger=none", "federation.deadline_seconds=0.2"]))
    for entry in history_of(result):
        assert entry["responders"] == 1  # the first client started in time; the others did not
        assert all("deadline" in reason for reason in entry["failures"].values())


def test_update_clipping_known_answer():
    reference = {"w": torch.zeros(2), "bn.running_mean": torch.zeros(2)}
    state = {"w": torch.tensor([3.0, 4.0]), "bn.running_mean": torch.tensor([10.0, 10.0])}
    clipped = clip_update(state, reference, ["w"], max_norm=1.0)
    torch.testing.assert_close(clipped["w"], torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(clipped["bn.running_mean"], state["bn.running_mean"])  # buffers pass through
    assert clip_update(state, reference, ["w"], max_norm=10.0) is state  # within the bound: untouched


def search_command(log_dir: Path, *extra: str, multirun: bool = False) -> list[str]:
    flags = ["-m"] if multirun else []  # Hydra's flags go before the overrides
    return [sys.executable, str(ROOT / "src" / "search.py"), *flags, *TINY, "logger=none", "federation.rounds=4",
            f"paths.log_dir={log_dir}", *extra]


def quiet_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    subprocess.run(search_command(tmp_path / "whole"), check=True, capture_output=True, env=quiet_env())
    whole = next((tmp_path / "whole").glob(f"search/runs/*/*/checkpoints/{LAST}")).parent

    victim = subprocess.Popen(search_command(tmp_path / "killed"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=quiet_env())
    deadline = time.time() + 120
    while not list((tmp_path / "killed").glob(f"search/runs/*/*/checkpoints/{LAST}")):
        assert victim.poll() is None and time.time() < deadline, "the search ended before its first checkpoint"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)  # mid-run: after round 1's checkpoint, during a later round
    victim.wait()
    killed = next((tmp_path / "killed").glob(f"search/runs/*/*/checkpoints/{LAST}")).parent
    assert load_latest_checkpoint(killed)["round"] < 4

    subprocess.run(search_command(tmp_path / "killed", "resume=true"), check=True, capture_output=True,
                   env=quiet_env())
    resumed = load_latest_checkpoint(killed)
    assert resumed["round"] == 4
    assert_same_states(load_latest_checkpoint(whole)["model"], resumed["model"])


def test_sweep_of_two_runs_through_submitit_local(tmp_path):
    command = search_command(tmp_path, "cluster=submitit_local", "seed=0,1", "federation.rounds=1", multirun=True)
    finished = subprocess.run(command, capture_output=True, text=True, env=quiet_env(), timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    runs = sorted(tmp_path.glob("search/multiruns/*/*/FINISHED"))
    assert len(runs) == 2
    assert {OmegaConf.load(p.parent / "config.yaml").seed for p in runs} == {0, 1}


def test_a_bad_sweep_job_fails_alone_and_the_sweep_reports_it_at_the_end(tmp_path):
    """Before: the bad job's SystemExit left submitit no result, and the launcher gave up on the sweep."""
    command = search_command(tmp_path, "cluster=submitit_local", "partition.alpha=0.5,-1,1.0", "federation.rounds=1",
                             multirun=True)
    finished = subprocess.run(command, capture_output=True, text=True, env=quiet_env(), timeout=300)
    assert finished.returncode != 0
    assert "partition.alpha must be a number > 0, got -1" in finished.stderr
    assert len(list(tmp_path.glob("search/multiruns/*/*/FINISHED"))) == 2  # the good jobs ran to their end
    (bad_log,) = [p for p in tmp_path.glob("search/multiruns/*/*/search.log") if "got -1" in p.read_text()]
    assert "error: sweep job 1" in bad_log.read_text()  # the failure is in the job's own log


def test_resume_true_in_a_sweep_continues_each_jobs_own_run(tmp_path):
    """Before: resume=true looked only in the new sweep's dir, which holds no run of any job, and failed."""
    sweep = search_command(tmp_path, "seed=0,1", multirun=True)  # Hydra's basic launcher: jobs in turn
    victim = subprocess.Popen(sweep, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=quiet_env())
    deadline = time.time() + 240
    while not list(tmp_path.glob(f"search/multiruns/*/1/checkpoints/{LAST}")):  # job 0 done, job 1 under way
        assert victim.poll() is None and time.time() < deadline, "the sweep ended before job 1's first checkpoint"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    (killed_sweep,) = tmp_path.glob("search/multiruns/*")
    assert (killed_sweep / "0" / "FINISHED").exists() and not (killed_sweep / "1" / "FINISHED").exists()

    # an unfinished run of seed=1 sits next to job 0 (seed=0): it must not be taken for job 0's
    finished = subprocess.run([*sweep, "resume=true"], capture_output=True, text=True, env=quiet_env(), timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    (new_sweep,) = [d for d in tmp_path.glob("search/multiruns/*") if d != killed_sweep]
    resumed = load_latest_checkpoint(killed_sweep / "1" / "checkpoints")
    assert (killed_sweep / "1" / "FINISHED").exists() and resumed["round"] == 4  # job 1 went on in its own dir
    assert OmegaConf.load(killed_sweep / "1" / "config.yaml").seed == 1
    assert not (new_sweep / "1" / "checkpoints").exists()
    assert (new_sweep / "0" / "FINISHED").exists()  # job 0 had no unfinished run: a new one, not seed=1's
    assert OmegaConf.load(new_sweep / "0" / "config.yaml").seed == 0


def test_client_seeds_differ_for_every_run_round_and_client():
    """The old linear mix gave (round 1, client 0) and (round 0, client 10,007) one seed."""
    from federated_nas.federation.backends import client_seed

    assert client_seed(0, 1, 0) != client_seed(0, 0, 10_007)
    assert client_seed(1, 0, 0) != client_seed(0, 0, 1_000_003)
    triples = [(seed, round_idx, client) for seed in range(3) for round_idx in range(50) for client in range(200)]
    assert len({client_seed(*triple) for triple in triples}) == len(triples)
    assert client_seed(3, 7, 11) == client_seed(3, 7, 11) and 0 <= client_seed(3, 7, 11) < 2**32
