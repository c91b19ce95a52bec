"""A device other than the CPU for machines without a GPU: real data on the CPU, behind tensors that say
they live elsewhere and refuse to mix with CPU tensors.

Why: a tensor made on the CPU inside a forward, backward or aggregation path (``torch.zeros(n)`` beside
a CUDA tensor) breaks only on a GPU, which the machines that run the suite lack. Inside ``off_cpu()``,
``x.to(DEVICE)`` (and any factory given ``device=DEVICE``) returns an ``OffCpuTensor``: its data is a
plain CPU tensor, so every op computes real numbers (``.item()``, ``nonzero``, data-dependent branches
and custom autograd functions all run), while ``.device`` reports ``DEVICE``. An op that mixes one with
a CPU tensor of one or more dimensions raises, as CUDA does (CUDA takes 0-dim CPU tensors as scalars,
and so does this); moving data (``.to``, ``.copy_``) is allowed both ways.

The alternatives do less: ``FakeTensorMode`` with a fake 'cuda' device cannot run a backward without a
CUDA driver (the autograd engine asks the driver for a context), and neither it nor the plain meta device
holds data, so ``.item()`` and data-dependent code cannot run; a new device type (PrivateUse1) needs a
C++ device guard. ``meta`` is the device reported: the one non-CPU device whose autograd needs no
driver. ``torch.tensor(data, device='meta')`` would drop its data (PyTorch makes meta tensors empty),
so that constructor is rerouted through the CPU.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, ContextManager, Iterator

import lightning as L
import torch
from lightning.pytorch.accelerators import Accelerator
from lightning.pytorch.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing

DEVICE = torch.device("meta")
NAME = "off_cpu"  # how tests name this device beside "cpu" and "cuda"
aten = torch.ops.aten
TRANSFERS = (aten._to_copy.default, aten.copy_.default)


class OffCpuTensor(torch.Tensor):
    """A tensor on ``DEVICE`` whose data is the CPU tensor ``data_``."""

    @staticmethod
    def __new__(cls, data: torch.Tensor) -> "OffCpuTensor":
        return torch.Tensor._make_wrapper_subclass(cls, data.shape, strides=data.stride(),
                                                   storage_offset=data.storage_offset(), dtype=data.dtype,
                                                   layout=data.layout, device=DEVICE, requires_grad=False)

    def __init__(self, data: torch.Tensor):
        self.data_ = data

    def __repr__(self) -> str:
        return f"OffCpuTensor({self.data_!r})"

    @property
    def is_meta(self) -> bool:
        """False: this tensor has data (``load_state_dict`` skips, with a warning, every copy into a meta tensor)."""
        return False

    def __tensor_flatten__(self):
        return ["data_"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return OffCpuTensor(inner["data_"])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        with _OffCpuDispatch():  # an op on tensors that left ``off_cpu()``: the same rules
            return func(*args, **(kwargs or {}))


class _Operands:
    """Unwraps an op's arguments to CPU data, noting what the device check needs: whether any was on
    ``DEVICE``, and the other tensors of one or more dimensions (``foreign``)."""

    def __init__(self):
        self.on_device, self.foreign = False, []

    def unwrap(self, value: Any) -> Any:
        if isinstance(value, OffCpuTensor):
            self.on_device = True
            return value.data_
        if isinstance(value, torch.Tensor):
            if value.dim() > 0:
                self.foreign.append(value)
            return value
        if isinstance(value, (list, tuple)):
            return type(value)(self.unwrap(item) for item in value)
        return value


def _wrap(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return OffCpuTensor(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_wrap(item) for item in value)
    return value


@functools.cache
def _aliases(func) -> bool:
    """Whether ``func`` returns a view or an input (in place): its result then needs the aliasing corrected."""
    return any(result.alias_info is not None for result in func._schema.returns)


class _OffCpuDispatch(TorchDispatchMode):
    """Every op: where its result lives (``DEVICE`` if it names it or reads an ``OffCpuTensor``), the
    mixing check, the op on the CPU data, the result wrapped."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        operands = _Operands()
        inner_args = operands.unwrap(args)
        inner_kwargs = {key: operands.unwrap(value) for key, value in kwargs.items()}
        on_device = operands.on_device
        if kwargs.get("device") is not None:  # factories and conversions: the device they name
            on_device = torch.device(kwargs["device"]) == DEVICE
            if on_device:
                inner_kwargs["device"] = torch.device("cpu")
        elif func is aten.copy_.default:  # in place: the destination's device
            on_device = isinstance(args[0], OffCpuTensor)
        foreign = operands.foreign
        if on_device and foreign and func not in TRANSFERS:
            raise RuntimeError(f"Expected all tensors to be on the same device: {func} got a {foreign[0].device} "
                               f"tensor of shape {tuple(foreign[0].shape)} beside tensors on {DEVICE}")
        out = func(*inner_args, **inner_kwargs)
        if not on_device:
            return out
        out = _wrap(out)
        return return_and_correct_aliasing(func, args, kwargs, out) if _aliases(func) else out


def _index_tensor(index: Any) -> Any:
    """A list in an index as the index tensor PyTorch would make of it on the indexed tensor's device."""
    if isinstance(index, list):
        return torch.tensor(index).to(DEVICE)
    if isinstance(index, tuple):
        return tuple(_index_tensor(part) for part in index)
    return index


REROUTED = {torch.tensor, torch.as_tensor, torch.Tensor.new_tensor, torch.Tensor.__getitem__, torch.Tensor.__setitem__,
            torch.Tensor.tolist}


class _DataConstructors(TorchFunctionMode):
    """What PyTorch builds from Python data directly on the device, which for meta keeps no data: ``torch.tensor``
    and ``torch.as_tensor`` with ``device=DEVICE``, ``new_tensor`` and lists in an index, made on the CPU and moved;
    and ``tolist``, which PyTorch refuses for a tensor subclass (CUDA tensors have it)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in REROUTED:
            return func(*args, **kwargs)
        if func in (torch.tensor, torch.as_tensor):
            if kwargs.get("device") is None or torch.device(kwargs["device"]) != DEVICE:
                return func(*args, **kwargs)
            return func(*args, **{key: value for key, value in kwargs.items() if key != "device"}).to(DEVICE)
        if not isinstance(args[0], OffCpuTensor):
            return func(*args, **kwargs)
        if func is torch.Tensor.tolist:
            return args[0].data_.tolist()
        if func is torch.Tensor.new_tensor:
            if kwargs.get("device") is not None:
                return func(*args, **kwargs)
            return torch.tensor(*args[1:], **{"dtype": args[0].dtype, **kwargs}).to(DEVICE)
        return func(args[0], _index_tensor(args[1]), *args[2:], **kwargs)  # __getitem__, __setitem__


def running_on(name: str) -> tuple[ContextManager, torch.device]:
    """(the context to run in, the torch device) of a device name of the tests: "cpu", ``NAME`` or "cuda"."""
    return (off_cpu(), DEVICE) if name == NAME else (contextlib.nullcontext(), torch.device(name))


@contextlib.contextmanager
def off_cpu() -> Iterator[None]:
    """Inside: ``DEVICE`` is a device with data, and mixing a CPU tensor with one on it raises."""
    with _DataConstructors(), _OffCpuDispatch():
        yield


class OffCpuAccelerator(Accelerator):
    """Lightning's view of ``DEVICE``: one device, nothing to set up (Lightning's CPU accelerator refuses it)."""

    def setup_device(self, device: torch.device) -> None:
        pass

    def teardown(self) -> None:
        pass

    def get_device_stats(self, device: Any) -> dict[str, Any]:
        return {}

    @staticmethod
    def parse_devices(devices: Any) -> int:
        return 1

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        return [DEVICE]

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def name() -> str:
        return NAME


def trainer_on(device: torch.device | str, **options: Any) -> L.Trainer:
    """A Trainer whose fit runs on ``device``: the CPU, CUDA, or ``DEVICE`` (inside ``off_cpu()``). An
    ``accelerator`` and ``devices`` in ``options`` (as a backend passes them) are replaced."""
    options = {key: value for key, value in options.items() if key not in ("accelerator", "devices")}
    options.setdefault("plugins", [LightningEnvironment()])
    device = torch.device(device)
    if device == DEVICE:
        return L.Trainer(strategy=SingleDeviceStrategy(device=DEVICE, accelerator=OffCpuAccelerator()), **options)
    if device.type == "cuda":
        return L.Trainer(accelerator="gpu", devices=[device.index or 0], **options)
    return L.Trainer(accelerator="cpu", devices=1, **options)
