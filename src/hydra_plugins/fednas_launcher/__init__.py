"""Hydra launcher of ``cluster=slurm_distributed``: a SLURM job's result is its task 0's, the server's.

hydra-submitit-launcher 1.2 reads every task's result (``job.results()``). A run of nodes x tasks
has one server (task 0) and workers; when a worker task dies (SIGKILL, out of memory, a lost node)
the server drops it and finishes the run, but the dead task leaves no result, so the stock launcher
raised ``UncompletedJobError ... (task: N)`` and the sweep exited 1 for a run that had finished.
Here a job's result is task 0's alone: the run fails only when the server does. The job body
(``__call__``), resubmission and the parameters are the stock SLURM launcher's; only the
submit-and-collect step is written again, since the stock one collects inside one method.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
EXECUTOR_INIT_KEYS = {"max_num_timeout"}  # submitit takes these when the executor is built, not as job parameters


def server_result(job: Any) -> JobReturn:
    """Task 0's result (waits for task 0 only); raises as the stock launcher does when task 0 failed."""
    return job.task(0).result()


def executor_parameters(params: dict[str, Any], cluster: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(executor arguments, job parameters) from the launcher config, in submitit's ``<cluster>_`` naming."""
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    init = {"folder": params["submitit_folder"],
            **{f"{cluster}_{key}": value for key, value in params.items() if key in EXECUTOR_INIT_KEYS}}
    job = {key if key in shared else f"{cluster}_{key}": value for key, value in params.items()
           if key not in EXECUTOR_INIT_KEYS and key != "submitit_folder"}
    return init, job


class ServerResultSlurmLauncher(SlurmLauncher):
    """The stock SLURM launcher, collecting each job's task 0 result only."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit  # lazy, as Hydra's plugin scan imports every launcher module

        assert self.config is not None and len(job_overrides) > 0
        init, parameters = executor_parameters(self.params, self._EXECUTOR)
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        executor.update_parameters(**parameters)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, int(str(self.config.hydra.sweep.mode), 8))
        log.info("Submitit '%s' sweep output dir : %s (a job's result is its task 0's)", self._EXECUTOR, sweep_dir)
        numbers = [initial_job_idx + offset for offset in range(len(job_overrides))]
        for number, overrides in zip(numbers, job_overrides):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        state = Singleton.get_state()
        jobs = executor.map_array(self, [list(o) for o in job_overrides], ["hydra.sweep.dir"] * len(numbers), numbers,
                                  [f"job_id_for_{n}" for n in numbers], [state] * len(numbers))
        return [server_result(job) for job in jobs]
