"""Errors that carry a one-line message naming the bad setting or input.

Entry points catch these and print the message alone (no traceback wall), because
the user needs to know which setting to fix, not where in the stack it was noticed.
"""

from __future__ import annotations

import errno


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the setting."""


class DataError(RuntimeError):
    """Data is missing or corrupt; the message says what and how to get it."""


class RunStopped(Exception):
    """The run was asked to stop (SIGTERM, SIGINT) and did, after writing its checkpoint."""

    def __init__(self, signal_name: str, exit_code: int, rounds_done: int, run_dir: str):
        super().__init__(f"stopped by {signal_name} after round {rounds_done}; its checkpoint is in {run_dir} "
                         f"(continue with resume={run_dir})" if rounds_done else
                         f"stopped by {signal_name} before round 1 ended: no checkpoint to resume from ({run_dir})")
        self.signal_name, self.exit_code, self.rounds_done, self.run_dir = signal_name, exit_code, rounds_done, run_dir


def disk_full(err: BaseException) -> BaseException | None:
    """The error in ``err``'s chain that says a disk (or quota) is full, or None.

    A file write raises ``OSError`` ENOSPC or EDQUOT; SQLite (the MLflow store) says "database or disk is
    full" inside SQLAlchemy's and MLflow's wrappers, so the chain is walked and the message read too.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        if "disk is full" in str(err) or "No space left on device" in str(err):
            return err
        err = err.__cause__ or err.__context__
    return None
