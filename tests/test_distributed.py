"""The multi-process backends (multiprocess, auto): cluster=local's model, a killed worker, the wire format."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from federated_nas.errors import ConfigError
from federated_nas.federation import auto
from federated_nas.federation.auto import plan_workers
from federated_nas.federation.backends import LocalBackend
from federated_nas.federation.checkpoint import LAST, load_latest_checkpoint
from federated_nas.federation.distributed import DistributedBackend
from federated_nas.federation.distributed.backend import launcher_place
from federated_nas.federation.distributed.wire import decode_state, encode_state
from federated_nas.federation.distributed.worker import KILL_WORKER_HOOK
from federated_nas.federation.server import sample_clients
from federated_nas.runs import run_search
from helpers import ROOT, TINY, compose_config

MULTIPROCESS = ["cluster=multiprocess", "cluster.backend.workers=2", "cluster.backend.worker_timeout_seconds=120"]


def search_process(log_dir: Path, *overrides: str, env: dict[str, str] | None = None,
                   timeout: float = 240) -> dict:
    """Run src/search.py in a subprocess; its last checkpoint."""
    command = [sys.executable, str(ROOT / "src" / "search.py"), *TINY, "logger=none", f"paths.log_dir={log_dir}",
               *overrides]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=timeout)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return load_latest_checkpoint(next(log_dir.glob(f"search/runs/*/*/checkpoints/{LAST}")).parent)


@pytest.fixture(scope="module")
def local_model(tmp_path_factory) -> dict:
    """The global model the tiny search reaches with cluster=local: what every multi-process run must reach."""
    final = run_search(compose_config("search", tmp_path_factory.mktemp("local"), ["logger=none"]))
    return load_latest_checkpoint(Path(final["run_dir"]) / "checkpoints")["model"]


def assert_model_of_cluster_local(checkpoint: dict, expected: dict) -> None:
    assert [h["responders"] for h in checkpoint["history"]] == [3, 3]
    model = checkpoint["model"]
    assert model.keys() == expected.keys()
    for key, value in expected.items():
        if value.is_floating_point():  # float64 sums in another order: agreement to rounding
            torch.testing.assert_close(model[key], value, rtol=0, atol=1e-6)
        else:
            assert torch.equal(model[key], value), key


@pytest.mark.parametrize("overrides", [
    ["algorithm=fedrlnas"],
    # 2 of 3 clients a round: client 2 first takes part in round 2, its policy's baseline the federation's, which
    # reaches its worker in the round's plan (RoundPlan.server_values)
    ["algorithm=perfedrlnas", "federation.client_fraction=0.67"],
], ids=["fedrlnas", "perfedrlnas"])
def test_reinforce_reports_and_plans_cross_the_wire(tiny_cfg, tmp_path, overrides):
    """Each client's child and reward travel in its report, the server's baseline in the plan: workers give the
    server the model and the clients' policies that cluster=local does."""
    overrides = [*overrides, "algorithm.reward_batches=1"]
    assert sample_clients(0, 0, 3, 0.67) == [0, 1] and 2 in sample_clients(0, 1, 3, 0.67)
    local = run_search(tiny_cfg("search", ["logger=none", *overrides]))
    expected = load_latest_checkpoint(Path(local["run_dir"]) / "checkpoints")
    distributed = search_process(tmp_path, "federation.rounds=2", *overrides, *MULTIPROCESS)
    assert [h["reward_mean"] for h in distributed["history"]] == pytest.approx(
        [h["reward_mean"] for h in expected["history"]])
    assert not any("child" in key or "reinforce" in key for key in expected["model"])
    assert distributed["personal"].keys() == expected["personal"].keys()
    for got, want in [(distributed["model"], expected["model"]),
                      *((distributed["personal"][k], v) for k, v in expected["personal"].items())]:
        assert got.keys() == want.keys()
        for key, value in want.items():  # float64 sums in another order: agreement to rounding
            tolerance = 1e-6 if value.is_floating_point() else 0
            torch.testing.assert_close(got[key], value, rtol=0, atol=tolerance)


def test_cluster_auto_sizes_its_workers_to_the_machine(tmp_path, monkeypatch):
    assert plan_workers(per_round=5, cores=2).workers == 2
    assert plan_workers(per_round=5, cores=16).workers == 5  # never more workers than a round's clients
    assert plan_workers(per_round=10, cores=16, threads_per_worker=4).workers == 4
    assert plan_workers(per_round=10, cores=16, max_workers=3).workers == 3
    assert plan_workers(per_round=5, cores=1).workers == 1  # one worker: in-process
    assert plan_workers(per_round=1, cores=16).workers == 1
    assert plan_workers(per_round=5, cores=16, gpus=1).workers == 1  # one GPU serves its clients in turn
    assert plan_workers(per_round=5, cores=16, gpus=4).workers == 4
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        default = compose("search")  # the default preset: 10 clients, 5 per round
    assert default.cluster.backend._target_ == "federated_nas.federation.auto.auto_backend"
    for cores, kind, workers in ((1, LocalBackend, None), (2, DistributedBackend, 2), (64, DistributedBackend, 5)):
        monkeypatch.setattr(auto, "usable_cores", lambda cores=cores: cores)
        backend = instantiate(default.cluster.backend, trainer=None)
        assert type(backend) is kind and getattr(backend, "workers", None) == workers
        assert getattr(backend, "launch", "spawn") == "spawn"


@pytest.mark.parametrize("cluster", [MULTIPROCESS, ["cluster=auto", "cluster.backend.worker_timeout_seconds=120"]],
                         ids=["multiprocess", "auto"])
def test_two_workers_reach_the_model_of_cluster_local(local_model, tiny_cfg, monkeypatch, caplog, cluster):
    """In this process, to spare a third interpreter's start-up; the killed-worker test runs src/search.py."""
    monkeypatch.setattr(auto, "usable_cores", lambda: 2)  # whatever this machine has: auto plans two workers
    with caplog.at_level(logging.INFO):
        final = run_search(tiny_cfg("search", ["logger=none", *cluster]))
    assert "2 workers joined" in caplog.text
    assert_model_of_cluster_local(load_latest_checkpoint(Path(final["run_dir"]) / "checkpoints"), local_model)


def test_a_killed_worker_is_dropped_and_the_run_finishes(tmp_path):
    # worker 1 runs clients 0 and 2, worker 2 runs client 1 and dies on receiving the first round
    finished = search_process(tmp_path, "federation.rounds=2", "federation.min_responders=1", *MULTIPROCESS,
                              env={KILL_WORKER_HOOK: "2:0"})
    killed, after = finished["history"]
    assert killed["responders"] == 2 and list(killed["failures"]) == ["1"]
    reason = killed["failures"]["1"]
    assert reason.startswith("worker 2 died: killed by signal 9")
    assert "timed out" not in reason  # noticed when its connection closed, not after the 120 s limit
    assert after["responders"] == 3 and not after["failures"]  # the remaining worker took all three clients


def test_state_dicts_cross_the_wire_exactly():
    state = {
        "weight": torch.randn(3, 4),
        "scalar": torch.tensor(0.1, dtype=torch.float32),
        "num_batches_tracked": torch.tensor(2**40 + 7),
        "mask": torch.tensor([[True, False], [False, True]]),
        "half": torch.randn(5).half(),
        "nothing": torch.zeros(0, 2),
    }
    header, values = encode_state(state)
    assert header.dtype == torch.uint8 and values.dtype == torch.float64
    decoded = decode_state(header, values)
    assert list(decoded) == list(state)
    for key, value in state.items():
        assert decoded[key].dtype == value.dtype and decoded[key].shape == value.shape, key
        assert torch.equal(decoded[key], value), key
    assert decode_state(*encode_state({})) == {}  # a client without personal state


def test_bad_backend_settings_are_one_line_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="cluster.backend.workers"):
        DistributedBackend(trainer=None, workers=0)
    with pytest.raises(ConfigError, match="cluster.backend.launch"):
        DistributedBackend(trainer=None, launch="mpi")
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="launch with torchrun"):  # cluster=torchrun without torchrun
        launcher_place()


def test_spawned_workers_share_the_machines_cores():
    """Each of N workers on one machine gets cores // N threads (at least 1), never all the cores."""
    from federated_nas.federation.distributed.worker import worker_threads

    assert worker_threads(2, cores=2) == 1
    assert worker_threads(4, cores=16) == 4
    assert worker_threads(3, cores=2) == 1
    assert worker_threads(1, cores=8) == 8


SERVER_RUN = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from helpers import compose_config
from federated_nas.builders import build
from federated_nas.runs import run_search
run_search(compose_config("search", Path({tmp!r}), ["logger=none", "federation.rounds=1", *{cluster!r}]))
build(compose_config("search", Path({tmp!r}), ["algorithm=fedmetanas"]).algorithm)  # its module, too
print(sorted({{name.split(".")[0] for name in sys.modules}} & {{"lightning", "torchmetrics", "torchvision"}}))
"""


def test_a_server_whose_clients_run_in_workers_never_imports_lightning(tmp_path):
    """Lightning's import is seconds (torchmetrics, torchvision's models, torch._dynamo): the server of
    cluster=auto / multiprocess (here FedNAS, the default) starts its first round without it, and only its
    workers import it. FedMetaNAS' method module is checked too."""
    program = SERVER_RUN.format(tests=str(ROOT / "tests"), tmp=str(tmp_path), cluster=MULTIPROCESS)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    finished = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=environment,
                              timeout=240, cwd=ROOT)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.strip().splitlines()[-1] == "[]"
    assert len(list(tmp_path.glob(f"search/runs/*/checkpoints/{LAST}"))) == 1  # the run went through its round
