"""Who may join a run as a worker: a per-run secret, proved in the worker's first message.

The backend is for a trusted cluster. This keeps out a process that is not part of the run (a worker of
another run, a wrong port, a scan that happens to connect): the server refuses it with one line and runs on
with the others. It does not keep out whoever can read the job's environment, and nothing on the wire is
encrypted: a federation across organisations needs TLS and authentication in front of it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

SECRET_ENV = "FEDNAS_RUN_SECRET"  # a launcher-started job's shared secret, where the job script sets it
OUTSIDER_HOOK = "FEDNAS_TEST_OUTSIDER"  # the test suite's outsider: the worker of this rank proves no secret


def new_secret() -> str:
    """A spawned run's secret: the server makes it and hands it to the workers it starts."""
    return secrets.token_hex(16)


def launcher_secret() -> str:
    """The secret every rank of a torchrun or SLURM job shares: ``FEDNAS_RUN_SECRET`` where the job sets it,
    else a digest of the job's identity (SLURM job id, torchrun's run id, master address and port), the same
    on every rank of one job and different for every other job."""
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV]
    identity = [os.environ.get(name, "") for name in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "MASTER_ADDR",
                                                      "MASTER_PORT")]
    return hashlib.sha256("|".join(identity).encode()).hexdigest()


def expected_proof(secret: str, rank: int) -> str:
    """What worker ``rank`` of a run with this secret sends: an HMAC, never the secret itself."""
    return hmac.new(secret.encode(), f"worker {rank}".encode(), hashlib.sha256).hexdigest()


def worker_proof(secret: str, rank: int) -> str:
    """The proof this worker sends (the test suite's outsider, ``FEDNAS_TEST_OUTSIDER=<rank>``, knows no secret)."""
    return expected_proof("" if os.environ.get(OUTSIDER_HOOK) == str(rank) else secret, rank)


def proves(message: dict, secret: str, rank: int) -> bool:
    """Whether worker ``rank``'s first message proves it knows the run's secret."""
    return hmac.compare_digest(str(message.get("proof", "")), expected_proof(secret, rank))
