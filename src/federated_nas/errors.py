"""Errors that carry a one-line message naming the bad setting or input.

Entry points catch these and print the message alone (no traceback wall), because
the user needs to know which setting to fix, not where in the stack it was noticed.
"""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the setting."""


class DataError(RuntimeError):
    """Data is missing or corrupt; the message says what and how to get it."""
