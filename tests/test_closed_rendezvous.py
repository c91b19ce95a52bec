"""A process that is not part of a run cannot work for it: refused with one line, and the run goes on."""

from __future__ import annotations

import logging

from federated_nas.federation.distributed.handshake import (OUTSIDER_HOOK, expected_proof, launcher_secret, proves,
                                                            worker_proof)
from federated_nas.runs import run_search


def test_a_proof_holds_for_its_run_and_rank_only(monkeypatch):
    secret = "0" * 32
    assert proves({"proof": worker_proof(secret, 1)}, secret, 1)
    assert not proves({"proof": worker_proof(secret, 1)}, secret, 2)  # another rank's
    assert not proves({"proof": worker_proof("1" * 32, 1)}, secret, 1)  # another run's
    assert not proves({"ready": 1}, secret, 1)  # none
    assert secret not in expected_proof(secret, 1)
    # a launcher-started job: every rank derives the same secret from the job, another job another one
    monkeypatch.delenv("FEDNAS_RUN_SECRET", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    first = launcher_secret()
    assert launcher_secret() == first
    monkeypatch.setenv("SLURM_JOB_ID", "18")
    assert launcher_secret() != first
    monkeypatch.setenv("FEDNAS_RUN_SECRET", "set by the job script")
    assert launcher_secret() == "set by the job script"


def test_an_outsider_in_a_workers_place_is_refused_and_the_run_finishes(tiny_cfg, monkeypatch, caplog):
    """Worker 2 is replaced by a process that knows the address but not the run's secret."""
    monkeypatch.setenv(OUTSIDER_HOOK, "2")  # the spawned workers inherit it: rank 2 proves no secret
    with caplog.at_level(logging.WARNING, logger="federated_nas"):
        final = run_search(tiny_cfg("search", ["logger=none", "federation.rounds=1", "cluster=multiprocess",
                                               "cluster.backend.workers=2",
                                               "cluster.backend.worker_timeout_seconds=120"]))
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and refused[0].startswith("worker 2 refused: its first message does not prove")
    assert "1 workers left" in refused[0]
    assert 0.0 <= final["global_test_acc"] <= 1.0 and final["client_test_acc_mean"] is not None  # every client ran
