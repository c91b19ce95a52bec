"""Stopping a run on SIGTERM or SIGINT without losing work, and continuing it when SLURM requeues the job.

SLURM preempts and cancels with SIGTERM (then SIGKILL after ``KillWait``); a user presses Ctrl-C. Either way
the run stops at a round boundary: the round in progress finishes (a SIGINT, or a SIGTERM between client
fits) or is abandoned (a SIGTERM inside a client's fit: Lightning ends the fit), the checkpoint of the last
whole round is on disk (written atomically after every round), the MLflow run is marked KILLED, and the
process exits with 128 + the signal's number. A second Ctrl-C stops at once.

Inside a SLURM job still RUNNING (a signal sent with ``scancel --signal=TERM``, not a cancel: a cancelled
job is CANCELLED and stays so; SLURM's own preemption requeues by itself) the stopped run asks SLURM to
requeue the job (``scontrol requeue``, as submitit does on its own timeout signal); the requeued job (``SLURM_RESTART_COUNT`` > 0) finds its run dir's checkpoint and
continues from it. Every random draw is a function of (seed, round, client), so the continued run ends
bit-equal to one never stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from types import FrameType

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """While entered (main thread only), SIGTERM and SIGINT ask the run to stop; ``requested`` says whether
    one came. The handlers it replaced are restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "none"

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or 0)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the user insists
        if self.signum is None:
            log.warning("%s received: stopping after this round's checkpoint (Ctrl-C again stops at once)",
                        signal.Signals(signum).name)
        self.signum = signum


def requeued_slurm_job() -> int:
    """How many times SLURM has restarted this job (0: a first start, or not a SLURM job)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: an array task as ``<array job>_<task>``."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job() -> bool:
    """Ask SLURM to requeue this batch job (after a stop by signal); False where that is not possible."""
    job_id = slurm_job_id()
    if job_id is None:
        return False
    try:
        shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], check=True, capture_output=True, text=True,
                               timeout=30).stdout
        state = next((field.split("=", 1)[1] for field in shown.split() if field.startswith("JobState=")), "?")
        if state != "RUNNING":  # scancel'ed (CANCELLED), or preempted and requeued by SLURM itself
            log.warning("SLURM job %s is %s: not requeued by the run", job_id, state)
            return False
        subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("could not requeue SLURM job %s (%s): resume it by hand with resume=<run dir>", job_id, err)
        return False
    log.warning("requeued SLURM job %s: it continues from its checkpoint when it starts again", job_id)
    return True
