"""What the Hydra entry points share: one clear line for bad input instead of a traceback wall."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from omegaconf.errors import OmegaConfBaseException

from federated_nas.errors import ConfigError, DataError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def set_project_root() -> None:
    """``paths.root_dir`` defaults to the checkout, wherever the command is run from."""
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))


def quiet_libraries() -> None:
    """Silence per-client Lightning banners at their logger (each client fit would print them)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)


def one_line_errors(main: Callable) -> Callable:
    """Turn known bad-input errors into ``error: <message>`` on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (ConfigError, DataError, OmegaConfBaseException) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    return wrapper
