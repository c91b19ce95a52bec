"""Shared fixtures: Hydra configs composed with the compose API, pointed at a temp dir."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

# The suite's models are tiny: one thread is as fast, and immune to a busy machine's oversubscription.
torch.set_num_threads(1)

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")

# Where the device-sensitive tests run (the ``device`` fixture): the CPU; off_cpu, a device emulated on the CPU
# that refuses CPU tensors (tests/off_cpu.py), so a tensor made without a device fails without a GPU too; and
# CUDA where a GPU is visible (scripts/gpu_check.sh runs them there).
DEVICES = ["cpu", "off_cpu"] + (["cuda"] if torch.cuda.is_available() else [])

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
    "plots_every=null",  # drawing costs seconds; the tests that check figures turn it on
    # in-process: these runs are a second of client work, and starting cluster=auto's worker processes
    # costs more (the tests of the workers, test_distributed.py, ask for them)
    "cluster=local",
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


def crash_then_resume(make_cfg, overrides: list[str], monkeypatch, resume_overrides: list[str] = ()) -> dict:
    """Run a search that dies right after round 0 is checkpointed, then ``resume=true`` it (with
    ``resume_overrides`` added)."""
    from federated_nas.federation import server
    from federated_nas.runs import run_search

    real_record = server.FederatedRun._record

    def crash_after_first_round(self, round_idx, metrics):
        real_record(self, round_idx, metrics)
        if round_idx == 0:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(server.FederatedRun, "_record", crash_after_first_round)
    with pytest.raises(KeyboardInterrupt):
        run_search(make_cfg("search", overrides + ["run_name=crashy"], run="first"))
    monkeypatch.setattr(server.FederatedRun, "_record", real_record)
    return run_search(make_cfg("search", [*overrides, "run_name=crashy", "resume=true", *resume_overrides],
                               run="second"))


def assert_same_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def assert_same_checkpoints(straight: dict, resumed: dict) -> tuple[dict, dict]:
    """The last checkpoints of two runs hold the same global model and the same per-client state.

    Returns (straight's, resumed's) checkpoints for further checks.
    """
    from federated_nas.federation.checkpoint import load_latest_checkpoint

    expected, got = (load_latest_checkpoint(Path(final["run_dir"]) / "checkpoints") for final in (straight, resumed))
    assert_same_states(got["model"], expected["model"])
    assert got["personal"].keys() == expected["personal"].keys()
    for client_id, state in expected["personal"].items():
        assert_same_states(got["personal"][client_id], state)
    return expected, got
