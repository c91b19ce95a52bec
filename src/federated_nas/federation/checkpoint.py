"""Server checkpoints: written atomically, read with ``weights_only=True``, the last good one kept.

A crash while saving must never destroy the checkpoint a resume needs, so the new file is
written beside the old one and renamed over it, and the previous checkpoint is kept as a
fallback for a file that turns out to be truncated or corrupt.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from federated_nas.errors import DataError

log = logging.getLogger(__name__)
LAST, PREVIOUS = "last.pt", "previous.pt"


def save_checkpoint(directory: str | Path, payload: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        last = directory / LAST
        if last.exists():
            os.replace(last, directory / PREVIOUS)
        os.replace(tmp, last)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return directory / LAST


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # truncated zip, pickle error, foreign objects: all mean "unusable"
        raise DataError(f"checkpoint {path} is corrupt or not a server checkpoint ({type(err).__name__})") from err


def read_run_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """A run dir's last checkpoint, or one line saying the folder holds no run that finished a round."""
    path = Path(run_dir) / "checkpoints" / LAST
    if not path.is_file():
        raise DataError(f"{run_dir} has no checkpoints/{LAST}: not a search run dir, or one that has not finished a round")
    return read_checkpoint(path)


def load_latest_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """The newest usable checkpoint in ``directory``; falls back to the previous one if the last is corrupt."""
    directory = Path(directory)
    last, previous = directory / LAST, directory / PREVIOUS
    if not last.exists() and not previous.exists():
        return None
    try:
        return read_checkpoint(last)
    except DataError as err:
        if not previous.exists():
            raise
        log.warning("%s; resuming from %s instead", err, previous)
        return read_checkpoint(previous)
