"""Raw CUDA kernels from Python: ``load_cuda`` builds a source with NVRTC and loads it as a ``CudaModule``.

Every non-template ``__global__`` function is an attribute (``extern "C"`` ones by their name, C++
ones through NVRTC's lowered names): a ``CudaKernel``, called as ``kernel(grid, block, *args,
shared_mem=0, stream=None)``. Tensors pass as device pointers, checked for device, dtype against
the pointer type, and contiguity; scalars are converted to the parsed C types. Kernels are loaded
with the driver API (``cuModuleLoadData``/``cuLaunchKernel``) on torch's current stream, and
report registers, local (spill) and shared memory from ``cuFuncGetAttribute``.

The cuda backend's per-process state lives here, once: ``_built`` (kernels built so far),
``_own_names`` (their names, for telling own kernels from torch's in a profile) and
``_instrumented`` (launches open profiler ranges); ``kfoundry.backends.cuda`` uses them through
this module.
"""

from __future__ import annotations

import ctypes
import math
import numbers
import re
import struct
import sys
import threading
from pathlib import Path
from typing import Any

from kfoundry.backends import nvcc
from kfoundry.backends.base import trusted_side
from kfoundry.backends.cuda_build import (
    BUILD_OP,
    DEFAULT_ARCH,
    BuildError,
    CudaBuildOutcome,
    build_cuda,
    locate_source,
)
from kfoundry.backends.cuda_driver import (
    _ATTR_MAX_DYNAMIC_SHARED,
    _driver,
    read_resources,
)
from kfoundry.backends.nvcc import FlagError, KernelDecl, Param
from kfoundry.backends.nvrtc import PROGRAM, CudaError, CudaUnavailable
from kfoundry.schema import Diagnostic, KernelStats

_built: list[KernelStats] = []
_own_names: set[str] = set()
_instrumented = False


# -- calling kernels -------------------------------------------------------------------------------

_SCALARS: dict[str, Any] = {
    "int": ctypes.c_int32, "int32_t": ctypes.c_int32, "unsigned int": ctypes.c_uint32, "uint32_t": ctypes.c_uint32,
    "long": ctypes.c_int64, "long long": ctypes.c_int64, "int64_t": ctypes.c_int64, "ptrdiff_t": ctypes.c_int64,
    "intptr_t": ctypes.c_int64, "unsigned long": ctypes.c_uint64, "unsigned long long": ctypes.c_uint64,
    "uint64_t": ctypes.c_uint64, "size_t": ctypes.c_uint64, "uintptr_t": ctypes.c_uint64, "short": ctypes.c_int16,
    "int16_t": ctypes.c_int16, "unsigned short": ctypes.c_uint16, "uint16_t": ctypes.c_uint16, "char": ctypes.c_int8,
    "signed char": ctypes.c_int8, "int8_t": ctypes.c_int8, "unsigned char": ctypes.c_uint8, "uint8_t": ctypes.c_uint8,
    "bool": ctypes.c_bool, "float": ctypes.c_float, "double": ctypes.c_double, "__half": ctypes.c_uint16,
    "__nv_bfloat16": ctypes.c_uint16,
}
_FLOATING = {"float", "double", "__half", "__nv_bfloat16"}
# element type of a pointer parameter -> torch dtype names it accepts (types not listed accept any dtype)
_POINTEE: dict[str, tuple[str, ...]] = {
    "float": ("float32",), "double": ("float64",), "__half": ("float16",), "__nv_bfloat16": ("bfloat16",),
    "__half2": ("float16",), "__nv_bfloat162": ("bfloat16",), "float2": ("float32", "complex64"), "float4": ("float32",),
    "double2": ("float64", "complex128"), "int": ("int32",), "int32_t": ("int32",), "unsigned int": ("int32", "uint32"),
    "uint32_t": ("int32", "uint32"), "int2": ("int32",), "int4": ("int32",), "long": ("int64",), "long long": ("int64",),
    "int64_t": ("int64",), "unsigned long": ("int64", "uint64"), "unsigned long long": ("int64", "uint64"),
    "uint64_t": ("int64", "uint64"), "size_t": ("int64", "uint64"), "short": ("int16",), "int16_t": ("int16",),
    "unsigned short": ("int16", "uint16", "float16", "bfloat16"), "uint16_t": ("int16", "uint16", "float16", "bfloat16"),
    "char": ("int8", "uint8", "bool"), "signed char": ("int8",), "int8_t": ("int8",), "unsigned char": ("uint8", "bool"),
    "uint8_t": ("uint8", "bool"), "uchar4": ("uint8",), "char4": ("int8",), "bool": ("bool",),
    "__nv_fp8_e4m3": ("float8_e4m3fn",), "__nv_fp8_e5m2": ("float8_e5m2",),
}
_ALIGN = {"float2": 8, "float4": 16, "double2": 16, "int2": 8, "int4": 16, "__half2": 4, "__nv_bfloat162": 4, "uchar4": 4, "char4": 4}


def _dims(value: Any, what: str) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, numbers.Integral) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, numbers.Integral) and d >= 1 for d in dims):
        raise ValueError(f"{what} must be a positive int or a tuple of 1 to 3 positive ints, got {value!r}")
    full = (*(int(d) for d in dims), 1, 1)[:3]
    return full[0], full[1], full[2]


def _half_bits(value: float) -> int:
    return struct.unpack("<H", struct.pack("<e", value))[0]


def _bf16_bits(value: float) -> int:
    bits = struct.unpack("<I", struct.pack("<f", value))[0]
    if math.isnan(value):
        return 0x7FC0
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


class CudaKernel:
    """One ``__global__`` function: ``kernel(grid, block, *args, shared_mem=0, stream=None)``."""

    def __init__(self, module: CudaModule, decl: KernelDecl, symbol: str) -> None:
        self.module = module
        self.decl = decl
        self.symbol = symbol
        self.__name__ = decl.name
        self.params = decl.params
        self._functions: dict[int, Any] = {}
        self._dynamic_shared: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"<cuda kernel {self.decl.name} ({self.symbol})>"

    def function(self, device: int) -> Any:
        fn = self._functions.get(device)
        if fn is None:
            fn = self._functions[device] = _driver().function(self.module._module(device), self.symbol)
        return fn

    def _pointer(self, index: int, param: Param, value: Any, holders: list[Any]) -> int | None:
        """A pointer argument: a contiguous, aligned CUDA tensor of a matching dtype, or an integer address."""
        import torch

        name = self.decl.name
        if isinstance(value, torch.Tensor):
            if value.device.type != "cuda":
                raise ValueError(f"{name}: argument {index} is on {value.device}; the cuda backend needs CUDA tensors (call .cuda())")
            dtype = str(value.dtype).removeprefix("torch.")
            allowed = _POINTEE.get(param.base, ()) if param.pointer == 1 else ()
            if allowed and dtype not in allowed:
                raise TypeError(f"{name}: argument {index} is {param.base}* but got a {dtype} tensor")
            if not value.is_contiguous():
                raise ValueError(f"{name}: argument {index} must be contiguous (call .contiguous())")
            align = _ALIGN.get(param.base, 1)
            if value.data_ptr() % align:
                raise ValueError(f"{name}: argument {index} is {param.base}* and must be {align}-byte aligned")
            holders.append(ctypes.c_void_p(value.data_ptr()))
            return value.device.index
        if value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
            holders.append(ctypes.c_void_p(int(value or 0)))
            return None
        raise TypeError(f"{name}: argument {index} is a pointer ({param.base}*); pass a CUDA tensor")

    def _argument(self, index: int, param: Param, value: Any, holders: list[Any]) -> int | None:
        """Append the ctypes value for one argument; returns the tensor's device index, if it is one."""
        import torch

        name = self.decl.name
        if param.reference:
            raise TypeError(f"{name}: parameter {index} is a C++ reference; kernels take pointers and plain scalars")
        if param.pointer:
            return self._pointer(index, param, value, holders)
        ctype = _SCALARS.get(param.base)
        if ctype is None:
            raise TypeError(f"{name}: parameter {index} has type {param.base!r}, which cannot be passed from Python; use pointers and plain C scalars")
        if isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: argument {index} is {param.base}; pass a Python number, not a tensor (use .item())")
        if param.base in _FLOATING:
            if not isinstance(value, numbers.Real):
                raise TypeError(f"{name}: argument {index} is {param.base}; pass a Python float")
            if param.base == "__half":
                holders.append(ctype(_half_bits(float(value))))
            elif param.base == "__nv_bfloat16":
                holders.append(ctype(_bf16_bits(float(value))))
            else:
                holders.append(ctype(float(value)))
            return None
        if not isinstance(value, numbers.Integral):
            raise TypeError(f"{name}: argument {index} is {param.base}; pass a Python int, not {type(value).__name__}")
        bits = ctypes.sizeof(ctype) * 8
        signed = ctype(-1).value == -1 if ctype is not ctypes.c_bool else False
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if ctype is not ctypes.c_bool and not low <= int(value) <= high:
            raise OverflowError(f"{name}: argument {index} ({value}) does not fit in {param.base}")
        holders.append(ctype(int(value)))
        return None

    def __call__(self, grid: Any, block: Any, *args: Any, shared_mem: int = 0, stream: Any = None) -> None:
        import torch

        name = self.decl.name
        if self.params is None:
            raise TypeError(f"{name}: its parameter list could not be read from the source (overloaded or unusual syntax); declare it with plain types")
        if len(args) != len(self.params):
            raise TypeError(f"{name} takes {len(self.params)} kernel arguments after grid and block ({len(args)} given)")
        g, b = _dims(grid, "grid"), _dims(block, "block")
        if b[0] * b[1] * b[2] > 1024:
            raise ValueError(f"{name}: a block has at most 1024 threads, got {b}")
        holders: list[Any] = []
        device: int | None = None
        for i, (value, param) in enumerate(zip(args, self.params, strict=True)):
            where = self._argument(i, param, value, holders)
            if where is not None:
                if device is not None and where != device:
                    raise ValueError(f"{name}: tensors are on different devices (cuda:{device} and cuda:{where})")
                device = where
        if device is None:
            device = torch.cuda.current_device()
        fn = self.function(device)
        if shared_mem > 48 * 1024 and self._dynamic_shared.get(device, 0) < shared_mem:
            _driver().set_attribute(fn, _ATTR_MAX_DYNAMIC_SHARED, int(shared_mem))
            self._dynamic_shared[device] = int(shared_mem)
        if stream is None:
            handle = torch.cuda.current_stream(device).cuda_stream
        elif isinstance(stream, numbers.Integral):
            handle = int(stream)
        else:
            handle = int(stream.cuda_stream)
        array = (ctypes.c_void_p * max(1, len(holders)))(*[ctypes.addressof(h) for h in holders])
        driver = _driver()
        driver.make_current(self.module._context(device))
        if _instrumented:
            with torch.profiler.record_function(f"cuda::{name}"):
                driver.launch(fn, g, b, int(shared_mem), handle, ctypes.addressof(array))
        else:
            driver.launch(fn, g, b, int(shared_mem), handle, ctypes.addressof(array))


class CudaModule:
    """Kernels of one NVRTC build; each non-template ``__global__`` function is an attribute."""

    def __init__(self, outcome: CudaBuildOutcome, source: str, name: str) -> None:
        self.name = name
        self.outcome = outcome
        image = Path(outcome.image).read_bytes()
        self._image = image + b"\0" if outcome.image_kind == "ptx" and not image.endswith(b"\0") else image
        self._decls = {d.name: d for d in nvcc.find_kernels(source) if not d.template}
        self._kernels: dict[str, CudaKernel] = {}
        self._modules: dict[int, Any] = {}
        self._contexts: dict[int, Any] = {}
        self._lock = threading.Lock()

    @property
    def kernels(self) -> list[str]:
        return [n for n, d in self._decls.items() if d.extern_c or n in self.outcome.lowered]

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self.kernels})

    def _context(self, device: int) -> Any:
        ctx = self._contexts.get(device)
        if ctx is None:
            ctx = self._contexts[device] = _driver().context(device)
        return ctx

    def _module(self, device: int) -> Any:
        with self._lock:
            module = self._modules.get(device)
            if module is None:
                import torch

                torch.cuda.init()
                driver = _driver()
                driver.make_current(self._context(device))
                module = self._modules[device] = driver.load(self._image)
            return module

    def __getattr__(self, name: str) -> CudaKernel:
        if name.startswith("_"):
            raise AttributeError(name)
        kernel = self._kernels.get(name)
        if kernel is None:
            decl = self._decls.get(name)
            if decl is None or not (decl.extern_c or name in self.outcome.lowered):
                known = ", ".join(self.kernels) or "none"
                raise AttributeError(f"the CUDA source defines no launchable kernel {name!r} (kernels: {known}); declare it __global__ (templates need extern \"C\" wrappers)")
            kernel = self._kernels[name] = CudaKernel(self, decl, self.outcome.lowered.get(name, name))
        return kernel

    def stats(self) -> list[KernelStats]:
        """Per-kernel registers, spills and shared memory: from the driver when a device is here, else from ptxas."""
        ptxas = {k["mangled"]: k for k in self.outcome.ptxas}
        device: int | None = None
        try:
            import torch

            if torch.cuda.is_available():
                device = torch.cuda.current_device()
        except Exception:  # noqa: BLE001 - no usable device: stats come from ptxas alone
            device = None
        found: list[KernelStats] = []
        for name in self.kernels:
            kernel = getattr(self, name)
            facts = ptxas.get(kernel.symbol, {})
            notes = [f"{self.outcome.image_kind} for {self.outcome.arch} by {self.outcome.toolchain}"]
            stats = KernelStats(
                name=name, registers=facts.get("registers"), spills_bytes=facts.get("spill_stores"),
                shared_memory_bytes=facts.get("shared_bytes"), build_s=round(self.outcome.seconds, 4), cached=self.outcome.cached, notes=notes,
            )
            if device is not None:
                try:
                    read_resources(kernel.function(device), stats)
                except (CudaError, CudaUnavailable) as exc:
                    stats.notes.append(f"driver attributes unavailable: {exc}")
            found.append(stats)
        return found


def _device_arch() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"sm_{major}{minor}"
    except Exception:  # noqa: BLE001, S110 - no usable device: build for the default architecture
        pass
    return DEFAULT_ARCH


def load_cuda(source: str, name: str | None = None, options: list[str] | None = None, arch: str | None = None) -> CudaModule:
    """Compile CUDA C++ ``source`` with NVRTC (cached) and load it on the current device.

    ``options``: NVRTC options from the allowed set (``-O3``, ``-DNAME=1``, ``--use_fast_math``,
    ``--fmad=false``, ``-maxrregcount=N``, ``-arch=sm_90a``, ...). ``arch`` defaults to the
    current device's (sm_90 on an H100/H200).

    Raises:
        BuildError: the source failed to compile (or NVRTC is unavailable); ``diagnostics`` hold the messages.
    """
    if not isinstance(source, str) or not source.strip():
        raise TypeError("load_cuda needs the CUDA C++ source as a non-empty string")
    label = re.sub(r"\W", "_", name or "kernel")[:64] or "kernel"
    opts = [str(o) for o in options or []]
    target = arch or _device_arch()
    channel = trusted_side()
    if channel is not None:
        reply = channel.request({"op": BUILD_OP, "source": source, "name": label, "options": opts, "arch": target})
        outcome = CudaBuildOutcome.model_validate(reply)
    else:
        line, file_label = _caller_location(source)
        try:
            outcome = build_cuda(source, opts, arch=target, line=line, file_label=file_label)
        except FlagError as exc:
            raise BuildError(str(exc), [Diagnostic(file=file_label, line=line, message=str(exc))]) from None
    if not outcome.ok:
        first = "\n".join(str(d) for d in outcome.diagnostics[:5]) or outcome.log[-2000:]
        raise BuildError(f"CUDA build failed:\n{first}", outcome.diagnostics)
    module = CudaModule(outcome, source, label)
    for decl in module._decls.values():
        _own_names.add(decl.name)
    _own_names.update(outcome.lowered.values())
    _built.extend(module.stats())
    return module


def _caller_location(source: str) -> tuple[int | None, str]:
    """Where ``source`` sits in the file that called load_cuda (so local runs get file:line messages)."""
    frame = sys._getframe(2)
    filename = frame.f_globals.get("__file__") if frame is not None else None
    if not filename:
        return None, PROGRAM
    try:
        text = Path(filename).read_text(encoding="utf-8")
    except OSError:
        return None, PROGRAM
    line = locate_source(text, source)
    return (line, Path(filename).name) if line is not None else (None, PROGRAM)
