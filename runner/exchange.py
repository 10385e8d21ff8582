"""Tensors by reference between the workers of one job.

On a GPU a tensor crosses as torch's CUDA IPC sharing tuple: the consumer maps the
producer's device memory, so nothing is copied through the host. On the CPU it crosses as
a file in the job's exchange folder (``/dev/shm`` where there is one), mapped shared by both
processes. Either way only a small ``TensorRef`` travels on the wire, and the consumer
checks every size and name it is handed: the producer may be hostile.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kfoundry.runner.handover import FILE_NAME, OPEN_NAME, OWN, ExchangeError
from kfoundry.runner.wire import PlainValue, TensorRef, Value

#: what this process exported, by name: the tensor, its descriptor and the allocation's size
_exports: dict[str, tuple[torch.Tensor, int, int]] = {}
#: descriptors that arrived for device tensors not yet mapped, by name
_received: dict[str, int] = {}


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ExchangeError(f"unknown dtype {name!r}")
    return dtype


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _described(value: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    tensor = value.detach().as_subclass(torch.Tensor)
    is_plain = type(value) is torch.Tensor or type(value) is torch.nn.Parameter
    return tensor, {"dtype": _dtype_name(tensor.dtype), "shape": list(tensor.shape), "type_name": type(value).__qualname__, "plain": is_plain}


def share(value: Any, exchange: Path, name: str) -> Value:
    """Describe ``value`` for another process: tensors by reference, anything else as a plain value."""
    if not isinstance(value, torch.Tensor):
        return plain(value)
    tensor, common = _described(value)
    if tensor.numel() == 0:
        return TensorRef(storage="empty", **common)
    if tensor.is_cuda:
        return TensorRef(storage="cuda", cuda=_export(tensor, name), **common)
    return TensorRef(storage="file", file=_write_file(tensor, exchange, name), **common)


def stage(value: Any, exchange: Path, name: str) -> Callable[[], Value]:
    """Capture ``value`` as it is now, to be described once the device is synchronized.

    For a queue of timed calls: a CUDA tensor is copied, queued on the current stream and not
    waited for, into the export buffer already kept under ``name`` (or into a fresh tensor,
    exported later, while no buffer of its shape exists yet), so a candidate that writes the
    same buffer on every call is seen call by call. Anything else is described now.
    """
    if not isinstance(value, torch.Tensor) or not value.is_cuda or value.numel() == 0:
        described = share(value, exchange, name)
        return lambda: described
    if not FILE_NAME.match(f"{name}.bin"):
        raise ExchangeError(f"bad exchange name {name!r}")
    tensor, common = _described(value)
    held = _exports.get(name)
    if held is not None and held[0].shape == tensor.shape and held[0].dtype == tensor.dtype and held[0].device == tensor.device:
        held[0].copy_(tensor)
        nbytes = held[2]
        return lambda: TensorRef(storage="cuda", cuda={"name": name, "nbytes": nbytes}, **common)
    snapshot = tensor.clone(memory_format=torch.contiguous_format)
    return lambda: TensorRef(storage="cuda", cuda=_export(snapshot, name), **common)


def plain(value: Any) -> PlainValue:
    if value is None or isinstance(value, (bool, int, float, str)):
        return PlainValue(value=value, type_name=type(value).__qualname__)
    if isinstance(value, (list, tuple)) and all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
        return PlainValue(value=list(value), type_name=type(value).__qualname__)
    return PlainValue(value=None, type_name=type(value).__qualname__, repr=repr(value)[:200])


def _export(tensor: torch.Tensor, name: str) -> dict[str, Any]:
    """``tensor`` copied into exportable memory kept under ``name`` (reused while the shape and dtype hold)."""
    from kfoundry.runner import devshare

    if not FILE_NAME.match(f"{name}.bin"):
        raise ExchangeError(f"bad exchange name {name!r}")
    held = _exports.get(name)
    # Work the producer left on other streams belongs to the value it hands over: wait for all of it.
    torch.cuda.synchronize(tensor.device)
    try:
        if held is not None and held[0].shape == tensor.shape and held[0].dtype == tensor.dtype and held[0].device == tensor.device:
            held[0].copy_(tensor)
        else:
            _forget(name)
            held = _exports[name] = devshare.exportable_copy(tensor.contiguous())
    except devshare.DeviceShareError as exc:
        raise ExchangeError(f"cannot share device memory: {exc}") from exc
    # The peer reads it from another process: the copy must have landed before the message leaves.
    torch.cuda.current_stream(tensor.device).synchronize()
    return {"name": name, "nbytes": held[2]}


def _forget(name: str) -> None:
    held = _exports.pop(name, None)
    if held is not None:
        os.close(held[1])


def outgoing(refs: list[TensorRef]) -> list[int]:
    """The descriptors of this process's exports that ``refs`` name (a channel attaches them to the frame)."""
    try:
        return [_exports[str((ref.cuda or {}).get("name"))][1] for ref in refs]
    except KeyError as exc:
        raise ExchangeError(f"no exported device memory is named {exc.args[0]!r}") from None


def incoming(refs: list[TensorRef], fds: list[int]) -> None:
    """Keep the descriptors that arrived with a message until ``open_tensor`` maps them."""
    for ref, fd in zip(refs, fds, strict=True):
        name = str((ref.cuda or {}).get("name"))
        old = _received.pop(name, None)
        if old is not None:
            os.close(old)
        if len(_received) >= 4096:
            os.close(fd)
            continue
        _received[name] = fd


def _write_file(tensor: torch.Tensor, exchange: Path, name: str) -> str:
    file = f"{name}.bin"
    if not FILE_NAME.match(file):
        raise ExchangeError(f"bad exchange file name {file!r}")
    (exchange / OWN).mkdir(exist_ok=True)
    path = exchange / OWN / file
    path.unlink(missing_ok=True)
    nbytes = tensor.numel() * tensor.element_size()
    mapped = torch.from_file(str(path), shared=True, size=nbytes, dtype=torch.uint8)
    mapped.view(tensor.dtype).view(tensor.shape).copy_(tensor)
    return f"{OWN}/{file}"


def open_value(value: Value, exchange: Path) -> Any:
    """The value another process shared: a tensor mapped onto its memory, or the plain value."""
    if isinstance(value, PlainValue):
        return value.value
    return open_tensor(value, exchange)


def open_tensor(ref: TensorRef, exchange: Path) -> torch.Tensor:
    dtype = _dtype(ref.dtype)
    shape = [int(s) for s in ref.shape]
    if any(s < 0 for s in shape) or len(shape) > 16:
        raise ExchangeError(f"bad shape {shape}")
    numel = math.prod(shape)
    if ref.storage == "empty" or numel == 0:
        if numel != 0:
            raise ExchangeError("an empty reference with elements")
        return torch.empty(shape, dtype=dtype)
    if ref.storage == "cuda":
        return _open_cuda(ref.cuda or {}, dtype, shape)
    if ref.file is None or not OPEN_NAME.match(ref.file):
        raise ExchangeError(f"bad exchange file name {ref.file!r}")
    path = exchange / ref.file
    nbytes = numel * dtype.itemsize
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise ExchangeError(f"exchange file {ref.file} is missing") from exc
    if size != nbytes:
        raise ExchangeError(f"exchange file {ref.file} holds {size} bytes, the tensor needs {nbytes}")
    return torch.from_file(str(path), shared=True, size=nbytes, dtype=torch.uint8).view(dtype).view(shape)


def _open_cuda(fields: dict[str, Any], dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    from kfoundry.runner import devshare

    name = str(fields.get("name"))
    fd = _received.pop(name, None)
    if fd is None:
        raise ExchangeError(f"no descriptor arrived for the device tensor {name!r}")
    try:
        return devshare.import_tensor(fd, int(fields.get("nbytes", -1)), shape, dtype, torch.cuda.current_device())
    except (devshare.DeviceShareError, TypeError, ValueError) as exc:
        raise ExchangeError(f"cannot map the device tensor {name!r}: {str(exc)[:300]}") from exc


def shared_empty(shape: list[int], dtype: torch.dtype, device: str, exchange: Path, name: str) -> tuple[torch.Tensor, TensorRef]:
    """A tensor this process writes and another maps: device memory (IPC) or a file in the exchange folder."""
    common = {"dtype": _dtype_name(dtype), "shape": list(shape)}
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype, device=device), TensorRef(storage="empty", **common)
    if device.startswith("cuda"):
        from kfoundry.runner import devshare

        if not FILE_NAME.match(f"{name}.bin"):
            raise ExchangeError(f"bad exchange name {name!r}")
        _forget(name)
        try:
            held = _exports[name] = devshare.exportable_empty(shape, dtype, torch.device(device).index or 0)
        except devshare.DeviceShareError as exc:
            raise ExchangeError(f"cannot share device memory: {exc}") from exc
        return held[0], TensorRef(storage="cuda", cuda={"name": name, "nbytes": held[2]}, **common)
    file = f"{name}.bin"
    if not FILE_NAME.match(file):
        raise ExchangeError(f"bad exchange file name {file!r}")
    (exchange / OWN).mkdir(exist_ok=True)
    path = exchange / OWN / file
    path.unlink(missing_ok=True)
    nbytes = math.prod(shape) * dtype.itemsize
    tensor = torch.from_file(str(path), shared=True, size=nbytes, dtype=torch.uint8).view(dtype).view(shape)
    return tensor, TensorRef(storage="file", file=f"{OWN}/{file}", **common)
