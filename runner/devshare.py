"""Device memory another process maps through a POSIX file descriptor (the CUDA driver's VMM API).

Legacy CUDA IPC (``cudaIpcGetMemHandle``, torch's ``reduce_tensor``) cannot cross PID
namespaces, and every worker sandbox has its own. An allocation made with ``cuMemCreate`` can
instead be exported as a file descriptor; whoever receives the descriptor (over a unix socket,
``SCM_RIGHTS``) may map the memory, wherever its pids live.

The producer calls :func:`exportable_empty` or :func:`exportable_copy` and sends the
descriptor; the consumer calls :func:`import_tensor`. Either side's tensor keeps its mapping
alive; when the last view of it goes, the mapping is torn down. The memory itself lives until
every mapping, allocation handle and exported descriptor is gone, so an exporter may free its
tensor as soon as the descriptor is in the socket.

CUDA ordering does not cross processes: the side that wrote must synchronize its stream before
telling the other side the data is there.

Struct layouts and enum values below are those of ``cuda.h`` from CUDA 13.0 (``CUDA_VERSION
13000``); the structs are the ``_v1`` ABI the driver keeps stable, and
``tests/runner/test_devshare.py`` checks sizes, offsets, enum values and versioned symbol names
against whatever ``cuda.h`` the test host has.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import operator
import os
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

# CUdevice_attribute
ATTR_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED = 102
ATTR_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED = 103
# CUmemAllocationType, CUmemLocationType, CUmemAllocationHandleType, CUmemAccess_flags
MEM_ALLOCATION_TYPE_PINNED = 0x1
MEM_LOCATION_TYPE_DEVICE = 0x1
MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 0x1
MEM_ACCESS_FLAGS_PROT_READWRITE = 0x3
# CUmemAllocationGranularity_flags
MEM_ALLOC_GRANULARITY_MINIMUM = 0x0
MEM_ALLOC_GRANULARITY_RECOMMENDED = 0x1

MAX_DIMS = 16
#: No device has this much memory; the bound keeps a peer's size inside ``size_t`` arithmetic.
MAX_BYTES = 1 << 48


class DeviceShareError(RuntimeError):
    """Device memory cannot be exported or imported; ``status`` is the CUresult when the driver said so."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _MemLocation(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _AllocFlags(ctypes.Structure):
    _fields_ = [("compressionType", ctypes.c_ubyte), ("gpuDirectRDMACapable", ctypes.c_ubyte),
                ("usage", ctypes.c_ushort), ("reserved", ctypes.c_ubyte * 4)]


class _MemAllocationProp(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int), ("location", _MemLocation),
                ("win32HandleMetaData", ctypes.c_void_p), ("allocFlags", _AllocFlags)]


class _MemAccessDesc(ctypes.Structure):
    _fields_ = [("location", _MemLocation), ("flags", ctypes.c_int)]


_u64, _size, _int, _ptr = ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int, ctypes.POINTER
#: The exact exported symbols (cuda.h ``#define``s some names to ``_v2``) and their argument types.
SIGNATURES: dict[str, list[Any]] = {
    "cuInit": [ctypes.c_uint],
    "cuGetErrorName": [_int, _ptr(ctypes.c_char_p)],
    "cuGetErrorString": [_int, _ptr(ctypes.c_char_p)],
    "cuDeviceGetCount": [_ptr(_int)],
    "cuDeviceGet": [_ptr(_int), _int],
    "cuDeviceGetAttribute": [_ptr(_int), _int, _int],
    "cuDevicePrimaryCtxRetain": [_ptr(ctypes.c_void_p), _int],
    "cuCtxGetCurrent": [_ptr(ctypes.c_void_p)],
    "cuCtxPushCurrent_v2": [ctypes.c_void_p],
    "cuCtxPopCurrent_v2": [_ptr(ctypes.c_void_p)],
    "cuCtxSynchronize": [],
    "cuMemGetAllocationGranularity": [_ptr(_size), _ptr(_MemAllocationProp), _int],
    "cuMemCreate": [_ptr(_u64), _size, _ptr(_MemAllocationProp), ctypes.c_ulonglong],
    "cuMemRelease": [_u64],
    "cuMemAddressReserve": [_ptr(_u64), _size, _size, _u64, ctypes.c_ulonglong],
    "cuMemAddressFree": [_u64, _size],
    "cuMemMap": [_u64, _size, _size, _u64, ctypes.c_ulonglong],
    "cuMemUnmap": [_u64, _size],
    "cuMemSetAccess": [_u64, _size, _ptr(_MemAccessDesc), _size],
    "cuMemExportToShareableHandle": [ctypes.c_void_p, _u64, _int, ctypes.c_ulonglong],
    "cuMemImportFromShareableHandle": [_ptr(_u64), ctypes.c_void_p, _int],
    "cuMemGetAllocationPropertiesFromHandle": [_ptr(_MemAllocationProp), _u64],
}

#: dtypes torch's ``__cuda_array_interface__`` reader takes by their own typestr (the tests hold torch to it).
_NATIVE = {torch.float64: "<f8", torch.float32: "<f4", torch.float16: "<f2", torch.complex128: "<c16",
           torch.complex64: "<c8", torch.int64: "<i8", torch.int32: "<i4", torch.int16: "<i2",
           torch.int8: "|i1", torch.uint8: "|u1", torch.bool: "|b1"}
#: Same-width integers for the rest (bfloat16, the float8s, uint16-64 on older torch); the tensor is viewed back.
_CARRIERS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
#: Their storage means nothing without a quantizer, which no descriptor carries.
_QUANTIZED = frozenset(getattr(torch, n) for n in ("qint8", "quint8", "qint32", "quint4x2", "quint2x4") if hasattr(torch, n))


@functools.cache
def _lib() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise DeviceShareError(f"the CUDA driver (libcuda.so.1) cannot be loaded: {exc}") from exc
    for name, argtypes in SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError as exc:
            raise DeviceShareError(f"the CUDA driver has no {name}: it predates the VMM API") from exc
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
    _check(lib.cuInit(0), "cuInit", lib)
    return lib


def _check(status: int, call: str, lib: ctypes.CDLL | None = None, why: str = "") -> None:
    if status == 0:
        return
    lib = lib or _lib()
    name, text = ctypes.c_char_p(), ctypes.c_char_p()
    lib.cuGetErrorName(status, ctypes.byref(name))
    lib.cuGetErrorString(status, ctypes.byref(text))
    detail = f"{(name.value or b'CUresult %d' % status).decode()} ({(text.value or b'').decode()})"
    raise DeviceShareError(f"{call} failed: {detail}{': ' + why if why else ''}", status)


def _attribute(attr: int, device: int) -> int:
    value = ctypes.c_int()
    _check(_lib().cuDeviceGetAttribute(ctypes.byref(value), attr, device), "cuDeviceGetAttribute")
    return value.value


@functools.cache
def _device_reason(device: int) -> str | None:
    count = ctypes.c_int()
    _check(_lib().cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
    if not 0 <= device < count.value:
        return f"CUDA device {device} does not exist ({count.value} visible)"
    handle = ctypes.c_int()
    _check(_lib().cuDeviceGet(ctypes.byref(handle), device), "cuDeviceGet")
    if not _attribute(ATTR_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, handle.value):
        return f"CUDA device {device} does not support virtual memory management (cuMemCreate)"
    if not _attribute(ATTR_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, handle.value):
        return f"CUDA device {device} cannot export memory as a POSIX file descriptor"
    return None


def supported(device_index: int | None = None) -> str | None:
    """None when memory on the device (torch's current one by default) can be shared by descriptor, else why not.

    Asks only the driver, so it does not initialise CUDA in torch (a process that forks later stays safe).
    """
    try:
        _lib()
        if torch.version.cuda is None:
            return "this torch build has no CUDA support"
        if device_index is None:
            device_index = torch.cuda.current_device() if torch.cuda.is_initialized() else 0
        return _device_reason(_integer(device_index, "device index"))
    except DeviceShareError as exc:
        return str(exc)


@functools.cache
def _primary_context(device: int) -> int:
    # Retained once for the life of the process: torch's runtime works in this same context.
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    _check(_lib().cuDeviceGet(ctypes.byref(dev), device), "cuDeviceGet")
    _check(_lib().cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    return ctx.value or 0


@contextlib.contextmanager
def _current(ctx: int) -> Iterator[None]:
    """Make ``ctx`` current for a few driver calls, leaving the thread as it was."""
    lib = _lib()
    cur = ctypes.c_void_p()
    _check(lib.cuCtxGetCurrent(ctypes.byref(cur)), "cuCtxGetCurrent")
    if (cur.value or 0) == ctx:
        yield
        return
    _check(lib.cuCtxPushCurrent_v2(ctx), "cuCtxPushCurrent")
    try:
        yield
    finally:
        lib.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))


def _open(device_index: int) -> tuple[int, int]:
    """(device, its primary context), with torch's CUDA initialised first so both use that context."""
    device = _integer(device_index, "device index")
    try:
        torch.cuda.init()
        count = torch.cuda.device_count()
    except (AssertionError, RuntimeError) as exc:  # torch raises AssertionError when built without CUDA
        raise DeviceShareError(f"torch cannot use CUDA here: {exc}") from exc
    if not 0 <= device < count:
        raise DeviceShareError(f"CUDA device {device} does not exist ({count} visible)")
    reason = _device_reason(device)
    if reason:
        raise DeviceShareError(reason)
    return device, _primary_context(device)


def _integer(value: Any, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError as exc:
        raise DeviceShareError(f"the {what} must be an integer, not {type(value).__name__}") from exc


def _typestr(dtype: torch.dtype) -> tuple[str, torch.dtype]:
    """(``__cuda_array_interface__`` typestr, the dtype torch builds from it, to be viewed as ``dtype``)."""
    if not isinstance(dtype, torch.dtype):
        raise DeviceShareError(f"not a torch dtype: {dtype!r}")
    if dtype in _NATIVE:
        return _NATIVE[dtype], dtype
    carrier = _CARRIERS.get(dtype.itemsize)
    if carrier is None or dtype in _QUANTIZED:
        raise DeviceShareError(f"{dtype} cannot be shared as device memory")
    return _NATIVE[carrier], carrier


def _shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        dims = tuple(operator.index(s) for s in shape)
    except TypeError as exc:
        raise DeviceShareError(f"the shape must be a sequence of integers, not {shape!r}") from exc
    if len(dims) > MAX_DIMS or any(d < 0 for d in dims):
        raise DeviceShareError(f"bad shape {list(dims)}: at most {MAX_DIMS} dimensions, none negative")
    return dims


def _granularity(prop: _MemAllocationProp, flag: int) -> int:
    value = ctypes.c_size_t()
    _check(_lib().cuMemGetAllocationGranularity(ctypes.byref(value), ctypes.byref(prop), flag), "cuMemGetAllocationGranularity")
    return value.value


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _byte_count(dims: tuple[int, ...], dtype: torch.dtype) -> int:
    nbytes = math.prod(dims) * dtype.itemsize
    if nbytes > MAX_BYTES:  # ctypes would silently wrap a size_t
        raise DeviceShareError(f"{list(dims)} {dtype} needs {nbytes} bytes, more than any device holds")
    return nbytes


@dataclass
class _Allocation:
    """What one mapping holds; released in reverse once the tensor is gone."""

    ctx: int
    handle: int
    size: int
    ptr: int = 0
    mapped: bool = False
    released: bool = False


def _release(res: _Allocation, in_use: bool) -> None:
    """Unmap, release the handle, free the address range, once; never raises (it runs from finalizers).

    Both a failed export or import and the finalizer of a half-built tensor may call it.
    """
    if res.released:
        return
    res.released = True
    try:
        lib = _lib()
        with _current(res.ctx):
            if res.mapped and in_use:
                # The storage dies when Python drops it, while queued kernels may still touch it, and
                # cuMemUnmap does not reliably wait for them (PyTorch's expandable segments sync too).
                _quiet(lib.cuCtxSynchronize(), "cuCtxSynchronize")
            if res.mapped:
                _quiet(lib.cuMemUnmap(res.ptr, res.size), "cuMemUnmap")
            _quiet(lib.cuMemRelease(res.handle), "cuMemRelease")
            if res.ptr:
                _quiet(lib.cuMemAddressFree(res.ptr, res.size), "cuMemAddressFree")
    except DeviceShareError as exc:  # no driver or context to work in: the memory goes with the process
        logger.debug("device share teardown skipped: %s", exc)


def _quiet(status: int, call: str) -> None:
    if status != 0:
        logger.debug("%s returned CUresult %d during device share teardown", call, status)


class _Mapping:
    """The ``__cuda_array_interface__`` torch wraps; torch keeps a reference to it for the storage's life."""

    def __init__(self, res: _Allocation, shape: tuple[int, ...], typestr: str) -> None:
        self.__cuda_array_interface__ = {"version": 3, "shape": shape, "typestr": typestr,
                                         "data": (res.ptr, False), "strides": None, "stream": None}
        finalizer = weakref.finalize(self, _release, res, True)
        # At exit the process's memory goes with it; tearing down then could race torch's own shutdown.
        finalizer.atexit = False


def _map(res: _Allocation, device: int, granularity: int, why: str = "") -> None:
    """Reserve an address range, map ``res.handle`` onto it, and let ``device`` read and write it."""
    lib = _lib()
    ptr = ctypes.c_uint64()
    _check(lib.cuMemAddressReserve(ctypes.byref(ptr), res.size, granularity, 0, 0), "cuMemAddressReserve")
    res.ptr = ptr.value
    _check(lib.cuMemMap(res.ptr, res.size, 0, res.handle, 0), "cuMemMap", why=why)
    res.mapped = True
    access = _MemAccessDesc(_MemLocation(MEM_LOCATION_TYPE_DEVICE, device), MEM_ACCESS_FLAGS_PROT_READWRITE)
    _check(lib.cuMemSetAccess(res.ptr, res.size, ctypes.byref(access), 1), "cuMemSetAccess")


def _tensor(res: _Allocation, shape: tuple[int, ...], dtype: torch.dtype, device: int) -> torch.Tensor:
    typestr, carrier = _typestr(dtype)
    try:
        tensor = torch.as_tensor(_Mapping(res, shape, typestr), device=torch.device("cuda", device))
    except (RuntimeError, TypeError, ValueError) as exc:  # e.g. the reader needs numpy
        raise DeviceShareError(f"torch cannot wrap the shared memory: {exc}") from exc
    if tensor.data_ptr() != res.ptr:
        raise DeviceShareError("torch copied the shared memory instead of wrapping it")
    return tensor if carrier == dtype else tensor.view(dtype)


def exportable_empty(shape: Sequence[int], dtype: torch.dtype, device_index: int) -> tuple[torch.Tensor, int, int]:
    """A tensor on fresh device memory another process can map, its exported descriptor, and the allocation size.

    The caller owns the descriptor: send it (``socket.send_fds``), then close it; while it is open
    it keeps the memory alive. The size is what the consumer passes to :func:`import_tensor`.

    Raises:
        DeviceShareError: bad shape or dtype, no usable device, or a driver call failed.
    """
    dims = _shape(shape)
    _typestr(dtype)  # refuse an unshareable dtype before allocating
    nbytes = _byte_count(dims, dtype)
    device, ctx = _open(device_index)
    lib = _lib()
    prop = _MemAllocationProp(type=MEM_ALLOCATION_TYPE_PINNED, requestedHandleTypes=MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                              location=_MemLocation(MEM_LOCATION_TYPE_DEVICE, device))
    with _current(ctx):
        granularity = _granularity(prop, MEM_ALLOC_GRANULARITY_RECOMMENDED)
        size = _round_up(max(nbytes, 1), granularity)
        handle = ctypes.c_uint64()
        _check(lib.cuMemCreate(ctypes.byref(handle), size, ctypes.byref(prop), 0), "cuMemCreate")
        res = _Allocation(ctx, handle.value, size)
        fd = ctypes.c_int(-1)
        try:
            _map(res, device, granularity)
            _check(lib.cuMemExportToShareableHandle(ctypes.byref(fd), res.handle, MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
                   "cuMemExportToShareableHandle")
            tensor = _tensor(res, dims, dtype, device)
        except BaseException:
            if fd.value >= 0:
                os.close(fd.value)
            _release(res, in_use=False)
            raise
    return tensor, fd.value, size


def import_tensor(fd: int, nbytes: int, shape: Sequence[int], dtype: torch.dtype, device_index: int) -> torch.Tensor:
    """Map memory another (untrusted) process exported as ``fd``; ``nbytes`` is the size it claims.

    Takes the descriptor: it is closed before returning, on success or failure (the imported
    handle holds the memory).

    The size of an imported allocation cannot be asked (cuda.h has no such call), but ``cuMemMap``
    requires offset plus size to lie within the allocation and returns CUDA_ERROR_INVALID_VALUE
    otherwise (tests/gpu/test_devshare_gpu.py holds the driver to that). So the claim is mapped as
    is, rounded up to the granularity: a peer that overstates it gets a failed import, never a
    mapping past its memory; one that understates it gets that prefix, which must still hold the tensor.

    Raises:
        DeviceShareError: the descriptor is not exported CUDA memory, the allocation is not on
            this device or is smaller than the claim, the claim cannot hold ``shape`` of ``dtype``,
            or the shape is bad.
    """
    try:
        dims = _shape(shape)
        _typestr(dtype)
        need, claimed = _byte_count(dims, dtype), _integer(nbytes, "byte count")
        if claimed > MAX_BYTES:
            raise DeviceShareError(f"the peer claims {claimed} bytes, more than any device holds")
        if claimed < max(need, 1):
            raise DeviceShareError(f"the peer's {claimed} bytes cannot hold {list(dims)} {dtype} ({need} bytes)")
        device, ctx = _open(device_index)
        with _current(ctx):
            return _import(_integer(fd, "descriptor"), claimed, dims, dtype, device, ctx)
    finally:
        with contextlib.suppress(OSError, TypeError, OverflowError):
            os.close(fd)


def _import(fd: int, claimed: int, dims: tuple[int, ...], dtype: torch.dtype, device: int, ctx: int) -> torch.Tensor:
    lib = _lib()
    handle = ctypes.c_uint64()
    # The POSIX handle is passed as the descriptor's value in the pointer argument.
    _check(lib.cuMemImportFromShareableHandle(ctypes.byref(handle), ctypes.c_void_p(fd), MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
           "cuMemImportFromShareableHandle", why=f"descriptor {fd} is not exported CUDA memory")
    res = _Allocation(ctx, handle.value, 0)
    try:
        prop = _MemAllocationProp()
        _check(lib.cuMemGetAllocationPropertiesFromHandle(ctypes.byref(prop), res.handle), "cuMemGetAllocationPropertiesFromHandle")
        if prop.location.type != MEM_LOCATION_TYPE_DEVICE or prop.location.id != device:
            raise DeviceShareError(f"the peer's memory is at location type {prop.location.type} id {prop.location.id}, not on CUDA device {device}")
        granularity = _granularity(prop, MEM_ALLOC_GRANULARITY_MINIMUM)
        res.size = _round_up(claimed, granularity)
        _map(res, device, granularity, why=f"the peer's allocation is smaller than the {res.size} bytes it claimed")
        return _tensor(res, dims, dtype, device)
    except BaseException:
        _release(res, in_use=False)
        raise


def exportable_copy(tensor: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """A copy of a CUDA tensor in exportable memory, its descriptor and the allocation size.

    The copy is queued on the current stream: synchronize it before the peer reads.

    Raises:
        DeviceShareError: not a CUDA tensor, or as :func:`exportable_empty`.
    """
    if not isinstance(tensor, torch.Tensor) or not tensor.is_cuda:
        raise DeviceShareError("only a CUDA tensor can be copied into exportable device memory")
    src = tensor.detach()
    out, fd, size = exportable_empty(tuple(src.shape), src.dtype, src.get_device())
    try:
        with torch.cuda.device(src.device):
            out.copy_(src)
    except BaseException:
        os.close(fd)
        raise
    return out, fd, size
