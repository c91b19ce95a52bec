"""The wire format, which needs no process group: a state dict as two tensors.

Tensors only, no pickles: a state dict travels as a length-prefixed uint8 tensor holding a UTF-8
JSON list of [key, shape, dtype], then one flat float64 tensor of all values, which is exact for
float32/16, bool and integers up to 2**53 (counters).
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from federated_nas.algorithms.core.base import State
from federated_nas.errors import DataError

WIRE_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)}
EXACT_INTEGER = 2**53  # the largest magnitude float64 carries without rounding


def json_tensor(value: Any) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(value).encode("utf-8")), dtype=torch.uint8)


def tensor_json(tensor: torch.Tensor) -> Any:
    try:
        return json.loads(tensor.numpy().tobytes().decode("utf-8"))
    except ValueError as err:
        raise DataError(f"malformed message header ({err})") from None


def encode_state(state: State) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 JSON header of [key, shape, dtype], flat float64 values) of a state dict."""
    entries, parts = [], []
    for key, tensor in state.items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in WIRE_DTYPES:
            raise DataError(f"state entry {key!r} is {tensor.dtype}, which the wire format cannot carry exactly")
        flat = tensor.detach().to("cpu").reshape(-1)
        if tensor.dtype == torch.int64 and flat.numel() and int(flat.abs().max()) > EXACT_INTEGER:
            raise DataError(f"state entry {key!r} holds integers beyond 2**53, which float64 would round")
        entries.append([key, list(tensor.shape), dtype])
        parts.append(flat.to(torch.float64))
    values = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)
    return json_tensor(entries), values


def decode_state(header: torch.Tensor, values: torch.Tensor) -> State:
    entries = tensor_json(header)
    if not entries:
        return {}
    counts = [math.prod(shape) for _, shape, _ in entries]
    if sum(counts) != values.numel():
        raise DataError(f"state message holds {values.numel()} values, its header describes {sum(counts)}")
    return {key: chunk.to(WIRE_DTYPES[dtype], copy=True).reshape(shape)
            for (key, shape, dtype), chunk in zip(entries, values.split(counts))}
