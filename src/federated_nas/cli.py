"""What the Hydra entry points share: one clear line for bad input instead of a traceback wall."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from omegaconf.errors import OmegaConfBaseException

from federated_nas.errors import ConfigError, DataError, RunStopped, disk_full

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def set_project_root() -> None:
    """``paths.root_dir`` defaults to the checkout, wherever the command is run from."""
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))


class SweepJobFailed(Exception):
    """One sweep job's bad input, as one line naming the job and its run dir."""


def sweep_job():
    """Hydra's config of this job when it runs inside a sweep (``-m``), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return HydraConfig.get()
    return None


def remove_empty_run_dir() -> None:
    """Drop the dir Hydra made for a run that failed on bad input, if it holds only Hydra's own files.

    Bad input must leave nothing behind; a dir with a config and a log but no run in it would
    clutter ``logs/`` and the listing ``resume=true`` searches.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    hydra_files = {hydra_cfg.output_subdir, f"{hydra_cfg.job.name}.log"}
    if run_dir.is_dir() and {path.name for path in run_dir.iterdir()} <= hydra_files:
        logging.shutdown()  # the job's log file handler lets go of the file
        shutil.rmtree(run_dir, ignore_errors=True)
        if run_dir.parent.parent.name == "runs" and not any(run_dir.parent.iterdir()):
            run_dir.parent.rmdir()  # the run name's dir (hydra.run.dir's layout), had this been its only run


def one_line_errors(main: Callable) -> Callable:
    """Turn known bad-input errors into ``error: <message>`` on stderr and exit status 2 (a full disk: 1).

    Inside a sweep (``-m``) the job raises ``SweepJobFailed`` instead of exiting: ``SystemExit``
    would get past Hydra's job runner and submitit's result handler, leaving no result, and the
    launcher would give up on the sweep while other jobs still run. As an exception it becomes the
    job's failed result: the line is in the job's own log, every other job runs to its end, and
    the sweep exits non-zero once all have.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except RunStopped as err:
            stopped(err)
        except (ConfigError, DataError, OmegaConfBaseException) as err:
            fail(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__, status=2)
        except Exception as err:
            full = disk_full(err)
            if full is None:
                raise
            fail(f"disk full: {str(full).strip().splitlines()[0]}; the run stopped after its last whole round's "
                 "checkpoint: free space, then rerun with resume=true", status=1)

    return wrapper


def fail(message: str, status: int) -> None:
    """``error: <message>`` and exit ``status``; in a sweep, the job's failed result instead (the docstring
    above). Status 2: bad input (its empty run dir removed); 1: the machine's fault (a full disk)."""
    hydra_cfg = sweep_job()
    if hydra_cfg is not None:
        line = f"sweep job {hydra_cfg.job.num} ({hydra_cfg.runtime.output_dir}): {message}"
        logging.getLogger("federated_nas").error("error: %s", line)  # the job's own log
        raise SweepJobFailed(line) from None
    print(f"error: {message}", file=sys.stderr)
    if status == 2:
        remove_empty_run_dir()
    sys.exit(status)


def stopped(err: RunStopped) -> None:
    """A run stopped by a signal: one line, a SLURM job requeued to continue, exit 128 + the signal's number.

    A sweep stops too (the user or the scheduler asked for it); a submitit job exits without a result, so
    its launcher waits for the requeued job instead of recording a failure."""
    from federated_nas.federation.preemption import requeue_slurm_job, slurm_job_id

    logging.getLogger("federated_nas").warning("%s", err)
    if err.signal_name == "SIGTERM" and slurm_job_id() is not None and sweep_job() is not None:
        requeue_slurm_job()
    print(f"stopped: {err}", file=sys.stderr)
    logging.shutdown()
    sys.exit(err.exit_code)


class CheckWritableDirs:
    """Hydra callback: the dirs a run writes (its output dir, ``paths.log_dir``) must be creatable, checked
    before Hydra makes the run dir, so a bad ``paths.log_dir`` is one line and not Hydra's traceback."""

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config, "hydra.sweep.dir")

    def on_job_start(self, config, **kwargs) -> None:
        """Hydra's other hooks (the job's own start and end) do nothing here."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        """Nothing to check when a job ends."""

    def on_run_end(self, config, **kwargs) -> None:
        """Nothing to check when a run ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        """Nothing to check when a sweep ends."""

    @staticmethod
    def _check(config, dir_key: str) -> None:
        """Create ``paths.log_dir`` (every run dir lies under it; a shared folder, so creating it leaves no
        half-written run), then make sure the run's own dir could be made in it."""
        from omegaconf import OmegaConf

        for key in ("paths.log_dir", dir_key):
            try:
                path = Path(str(OmegaConf.select(config, key)))
            except Exception:  # noqa: BLE001 -- an interpolation error: Hydra reports it, with its own message
                continue
            existing = next((parent for parent in [path, *path.parents] if parent.exists()), None)
            try:
                if key == "paths.log_dir":
                    path.mkdir(parents=True, exist_ok=True)
                elif existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
                    raise PermissionError(f"{existing} is not a writable folder")
            except OSError as err:
                print(f"error: {key}={path} cannot be created ({err.strerror or err}); set paths.log_dir to a "
                      "writable folder", file=sys.stderr)
                sys.exit(2)
