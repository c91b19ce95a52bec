"""Shared fixtures: Hydra configs composed with the compose API, pointed at a temp dir."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

# The suite's models are tiny: one thread is as fast, and immune to a busy machine's oversubscription.
torch.set_num_threads(1)

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")

# Tiny but complete: synthetic images, 3 clients, 2 rounds, a 2-layer supernet.
TINY = [
    "dataset=synthetic",
    "federation.num_clients=3",
    "federation.rounds=2",
    "federation.client_fraction=1.0",
    "federation.local_batches=2",
    "federation.batch_size=8",
    "federation.global_test_samples=null",
    "federation.client_eval_every=1",
    "federation.eval_batch_size=64",
    "partition.min_client_size=5",
]


def compose_config(config_name: str, tmp_path: Path, overrides: list[str] = (), run: str = "run0") -> DictConfig:
    """A composed config whose every path lies under ``tmp_path``."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=[
            *TINY,
            f"paths.root_dir={tmp_path}",
            f"paths.output_dir={tmp_path}/{config_name}/runs/{run}",
            *overrides,
        ])
    return cfg


@pytest.fixture(autouse=True)
def _quiet_lightning():
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    yield


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(config_name: str = "search", overrides: list[str] = (), run: str = "run0") -> DictConfig:
        return compose_config(config_name, tmp_path, list(overrides), run)

    return make
