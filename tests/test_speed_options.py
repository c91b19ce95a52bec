"""The optional speed settings: torch.compile of the clients' model copy and bf16 autocast."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from federated_nas.federation.checkpoint import load_latest_checkpoint
from federated_nas.runs import run_search
from federated_nas.search_space.supernet import SearchNetwork

ONE_ROUND = ["logger=none", "federation.rounds=1", "federation.num_clients=2"]


def final_state(result) -> dict[str, torch.Tensor]:
    return load_latest_checkpoint(Path(result["run_dir"]) / "checkpoints")["model"]


def test_compile_option_compiles_the_worker_copy_once(tiny_cfg, monkeypatch):
    """``cluster.backend.compile``: the clients' worker copy is compiled once, in place, with the given options.

    In place (``nn.Module.compile``) keeps the state dict's keys, so loading global states and
    uploading updates are unchanged. What generated kernels gain is timed in ``make bench``.
    """
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **options: calls.append((type(self), options)))
    run_search(tiny_cfg("search", [*ONE_ROUND, "+cluster.backend.compile.mode=reduce-overhead"]))
    assert calls == [(SearchNetwork, {"mode": "reduce-overhead"})]
    calls.clear()
    run_search(tiny_cfg("search", ONE_ROUND, run="plain"))
    assert calls == []  # off by default


def test_bf16_autocast_runs_every_local_step_kind(tiny_cfg):
    """``trainer.precision=bf16-mixed``: Lightning's autocast around the manual-optimization steps."""
    for algorithm in ("fedmetanas",):  # its inner loop's autograd.grad runs under the autocast too
        result = run_search(tiny_cfg("search", [*ONE_ROUND, f"algorithm={algorithm}", "trainer.precision=bf16-mixed"],
                                     run=algorithm))
        assert math.isfinite(result["global_test_loss"])
        assert all(v.dtype != torch.bfloat16 for v in final_state(result).values())  # weights stay float32
