"""Shared fixtures: Hydra configs composed with the compose API, pointed at a temp dir; the device fixture;
each method's learning run, shared by every test that reads it. Helpers are in helpers.py.

pytest puts this folder on sys.path when it loads this file (its default ``prepend`` import mode), so test
modules here and in tests/methods/ import ``helpers`` and ``off_cpu`` alike."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from omegaconf import DictConfig

from helpers import DEVICES, compose_config, learning_run

# The suite's models are tiny: one thread is as fast, and immune to a busy machine's oversubscription; so are
# the processes tests start (runs, sweeps, scripts), which inherit this: with a thread per core on 2 busy cores
# their OpenMP threads spun in wait (a search-then-retrain test took 70-220 s, 20 s with one thread).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _quiet_lightning():
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    yield


@pytest.fixture(params=DEVICES)
def device(request):
    """Each of ``DEVICES`` in turn, the test inside its context (off_cpu's emulation); CUDA without TF32, so
    float32 known answers hold at the CPU's tolerances."""
    from off_cpu import running_on  # Lightning: imported where used

    context, device = running_on(request.param)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with context:
            yield device
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(config_name: str = "search", overrides: list[str] = (), run: str = "run0") -> DictConfig:
        return compose_config(config_name, tmp_path, list(overrides), run)

    return make


@pytest.fixture(scope="session")
def method_run(tmp_path_factory):
    """``method_run(name)``: the finished learning run of configs/algorithm/<name>.yaml (``helpers.learning_run``),
    run once per session: the learning test and the method modules' checks of a plain run read the same one."""
    finished = {}

    def run(name: str):
        if name not in finished:
            finished[name] = learning_run(name, tmp_path_factory.mktemp(name))
        return finished[name]

    return run
