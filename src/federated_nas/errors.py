"""Errors that carry a one-line message naming the bad setting or input.

Entry points catch these and print the message alone (no traceback wall), because
the user needs to know which setting to fix, not where in the stack it was noticed.
"""


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
