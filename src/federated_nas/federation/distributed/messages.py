"""Messages between two ranks over gloo: framed tensors and JSON, each with a time limit; a client's outcome
and a round's command.

A client's outcome is a short float64 head (client id, ok, samples, compute seconds), then its model
state, its report (train_loss, a reward, a child: whatever its local module reported) and its
personal state, each framed as a state dict.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, fields
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist

from federated_nas.algorithms.core.base import RoundPlan
from federated_nas.federation.backends import ClientFailure, ClientUpdate
from federated_nas.federation.distributed.wire import decode_state, encode_state, json_tensor, tensor_json

SERVER = 0


def time_left(until: float | None) -> timedelta | None:
    """The limit of one operation, from an absolute monotonic time (None: the process group's default)."""
    return None if until is None else timedelta(seconds=max(until - time.monotonic(), 0.01))


def first_sentence(err: BaseException) -> str:
    """An error's gist for a one-line reason: gloo prefixes its source location and appends advice."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip())
    return text.splitlines()[0].split(". ")[0] if text else type(err).__name__


class LinkLost(RuntimeError):
    """A message could not be sent or received: the peer died, closed its end or missed the time limit."""


def _complete(start: Callable[[], dist.Work], limit: timedelta | None, what: str) -> None:
    try:
        work = start()
        done = work.wait() if limit is None else work.wait(timeout=limit)
    except Exception as err:  # noqa: BLE001 -- gloo reports a closed peer or a timeout as RuntimeError
        raise LinkLost(f"{what}: {first_sentence(err)}") from err
    if not done:
        raise LinkLost(f"{what}: timed out after {limit}")


def send_tensor(tensor: torch.Tensor, peer: int, until: float | None = None) -> None:
    _complete(lambda: dist.isend(tensor, dst=peer), time_left(until), f"sending to rank {peer}")


def recv_tensor(tensor: torch.Tensor, peer: int, until: float | None = None,
                limit: timedelta | None = None) -> torch.Tensor:
    _complete(lambda: dist.irecv(tensor, src=peer), limit or time_left(until), f"receiving from rank {peer}")
    return tensor


def send_framed(header: torch.Tensor, values: torch.Tensor, peer: int, until: float | None = None) -> None:
    """Sizes first, so the receiver can allocate; empty tensors are not sent."""
    send_tensor(torch.tensor([header.numel(), values.numel()], dtype=torch.int64), peer, until)
    for part in (header, values):
        if part.numel():
            send_tensor(part, peer, until)


def recv_framed(peer: int, until: float | None = None,
                limit: timedelta | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    header_bytes, count = recv_tensor(torch.empty(2, dtype=torch.int64), peer, until, limit).tolist()
    header = torch.empty(header_bytes, dtype=torch.uint8)
    values = torch.empty(count, dtype=torch.float64)
    for part in (header, values):
        if part.numel():
            recv_tensor(part, peer, until)
    return header, values


def send_json(value: Any, peer: int, until: float | None = None) -> None:
    send_framed(json_tensor(value), torch.empty(0, dtype=torch.float64), peer, until)


def recv_json(peer: int, until: float | None = None, limit: timedelta | None = None) -> Any:
    return tensor_json(recv_framed(peer, until, limit)[0])


def send_outcome(outcome: ClientUpdate | ClientFailure, peer: int = SERVER) -> None:
    """[client id, ok, samples, compute seconds], then model state, report and personal state (each as a
    state dict), or the failure's reason."""
    ok = isinstance(outcome, ClientUpdate)
    head = [outcome.client_id, float(ok), outcome.num_samples if ok else 0, outcome.compute_seconds if ok else 0]
    send_tensor(torch.tensor(head, dtype=torch.float64), peer)
    if ok:
        for part in (outcome.state, outcome.report, outcome.personal):
            send_framed(*encode_state(part), peer)
    else:
        send_json({"reason": outcome.reason}, peer)


def recv_outcome(peer: int, until: float | None) -> ClientUpdate | ClientFailure:
    client_id, ok, samples, seconds = recv_tensor(torch.empty(4, dtype=torch.float64), peer, until).tolist()
    if not ok:
        return ClientFailure(int(client_id), str(recv_json(peer, until)["reason"]))
    state, report, personal = (decode_state(*recv_framed(peer, until)) for _ in range(3))
    return ClientUpdate(int(client_id), state, int(samples), seconds, report, personal)


def round_command(plan: RoundPlan, clients: list[int]) -> dict[str, Any]:
    """What a worker is told at the start of a round: the plan (as a dict) and its share of the clients."""
    return {"command": "round", **asdict(plan), "clients": clients}


def round_plan(command: dict[str, Any]) -> RoundPlan:
    """The plan a round command carries."""
    return RoundPlan(**{field.name: command[field.name] for field in fields(RoundPlan)})
