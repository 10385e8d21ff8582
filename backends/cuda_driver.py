"""The CUDA driver API on the worker side, through ``cuda.bindings`` or libcuda.so.1 via ctypes.

``_driver()`` picks the binding as NVRTC's is picked (``KFOUNDRY_CUDA_BINDING``) and wraps the few
calls kernels need: primary contexts, ``cuModuleLoadData``, ``cuModuleGetFunction``,
``cuFuncGetAttribute``/``cuFuncSetAttribute`` and ``cuLaunchKernel``.
"""

from __future__ import annotations

import ctypes
import importlib.util
from functools import cache
from typing import Any

from kfoundry.backends.nvrtc import CudaError, CudaUnavailable, _binding_choice
from kfoundry.schema import KernelStats

# CUfunction_attribute values (cuda.h)
_ATTR_MAX_THREADS = 0
_ATTR_SHARED = 1
_ATTR_LOCAL = 3
_ATTR_REGS = 4
_ATTR_MAX_DYNAMIC_SHARED = 8


class _DriverCtypes:
    kind = "ctypes"

    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise CudaUnavailable(f"unavailable: the CUDA driver (libcuda.so.1) cannot be loaded: {exc}") from exc
        L = self.lib
        L.cuLaunchKernel.argtypes = [ctypes.c_void_p, *[ctypes.c_uint] * 7, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        L.cuModuleGetFunction.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_char_p]
        L.cuModuleLoadData.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p]
        L.cuFuncGetAttribute.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_void_p]
        L.cuFuncSetAttribute.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        L.cuCtxSetCurrent.argtypes = [ctypes.c_void_p]
        self._ok(L.cuInit(0), "cuInit")

    def _ok(self, status: int, call: str) -> None:
        if status != 0:
            name = ctypes.c_char_p()
            text = ctypes.c_char_p()
            self.lib.cuGetErrorName(status, ctypes.byref(name))
            self.lib.cuGetErrorString(status, ctypes.byref(text))
            raise CudaError(f"{call} failed: {(name.value or b'').decode()} ({(text.value or b'').decode()})")

    def context(self, device: int) -> Any:
        dev, ctx = ctypes.c_int(), ctypes.c_void_p()
        self._ok(self.lib.cuDeviceGet(ctypes.byref(dev), device), "cuDeviceGet")
        self._ok(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        return ctx.value

    def make_current(self, ctx: Any) -> None:
        cur = ctypes.c_void_p()
        self._ok(self.lib.cuCtxGetCurrent(ctypes.byref(cur)), "cuCtxGetCurrent")
        if cur.value != ctx:
            self._ok(self.lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")

    def load(self, image: bytes) -> Any:
        module = ctypes.c_void_p()
        self._ok(self.lib.cuModuleLoadData(ctypes.byref(module), image), "cuModuleLoadData")
        return module.value

    def function(self, module: Any, symbol: str) -> Any:
        fn = ctypes.c_void_p()
        self._ok(self.lib.cuModuleGetFunction(ctypes.byref(fn), module, symbol.encode()), f"cuModuleGetFunction({symbol})")
        return fn.value

    def attribute(self, fn: Any, attr: int) -> int:
        value = ctypes.c_int()
        self._ok(self.lib.cuFuncGetAttribute(ctypes.byref(value), attr, fn), "cuFuncGetAttribute")
        return value.value

    def set_attribute(self, fn: Any, attr: int, value: int) -> None:
        self._ok(self.lib.cuFuncSetAttribute(fn, attr, value), "cuFuncSetAttribute")

    def launch(self, fn: Any, grid: tuple[int, int, int], block: tuple[int, int, int], shared: int, stream: int, params: int) -> None:
        self._ok(self.lib.cuLaunchKernel(fn, *grid, *block, shared, stream, params, None), "cuLaunchKernel")


class _DriverBindings:
    kind = "cuda-python"

    def __init__(self) -> None:
        from cuda.bindings import driver

        self.d = driver
        self._ok(driver.cuInit(0), "cuInit")

    def _ok(self, result: Any, call: str) -> list[Any]:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.d.CUresult.CUDA_SUCCESS:
            _, name = self.d.cuGetErrorName(err)
            _, text = self.d.cuGetErrorString(err)
            raise CudaError(f"{call} failed: {name.decode() if isinstance(name, bytes) else name} ({text.decode() if isinstance(text, bytes) else text})")
        return rest

    def context(self, device: int) -> Any:
        (dev,) = self._ok(self.d.cuDeviceGet(device), "cuDeviceGet")
        (ctx,) = self._ok(self.d.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        return ctx

    def make_current(self, ctx: Any) -> None:
        (cur,) = self._ok(self.d.cuCtxGetCurrent(), "cuCtxGetCurrent")
        if _address(cur) != _address(ctx):
            self._ok(self.d.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")

    def load(self, image: bytes) -> Any:
        (module,) = self._ok(self.d.cuModuleLoadData(image), "cuModuleLoadData")
        return module

    def function(self, module: Any, symbol: str) -> Any:
        (fn,) = self._ok(self.d.cuModuleGetFunction(module, symbol.encode()), f"cuModuleGetFunction({symbol})")
        return fn

    def attribute(self, fn: Any, attr: int) -> int:
        (value,) = self._ok(self.d.cuFuncGetAttribute(self.d.CUfunction_attribute(attr), fn), "cuFuncGetAttribute")
        return int(value)

    def set_attribute(self, fn: Any, attr: int, value: int) -> None:
        self._ok(self.d.cuFuncSetAttribute(fn, self.d.CUfunction_attribute(attr), value), "cuFuncSetAttribute")

    def launch(self, fn: Any, grid: tuple[int, int, int], block: tuple[int, int, int], shared: int, stream: int, params: int) -> None:
        self._ok(self.d.cuLaunchKernel(fn, *grid, *block, shared, stream, params, 0), "cuLaunchKernel")


def _address(handle: Any) -> int:
    try:
        return int(handle)
    except TypeError:
        return int(handle.getPtr())


@cache
def _driver() -> _DriverCtypes | _DriverBindings:
    choice = _binding_choice()
    if choice in ("auto", "cuda-python") and importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None:
        try:
            return _DriverBindings()
        except Exception:  # fall back to ctypes on any binding failure
            if choice == "cuda-python":
                raise
    return _DriverCtypes()


def read_resources(fn: Any, stats: KernelStats) -> None:
    """Registers, static shared memory and local memory of a loaded function, as the driver reports them, into ``stats``.

    Local memory stands in for spills where the build left no ptxas figure. Raises ``CudaError`` /
    ``CudaUnavailable`` as the driver calls do.
    """
    driver = _driver()
    stats.registers = driver.attribute(fn, _ATTR_REGS)
    stats.shared_memory_bytes = driver.attribute(fn, _ATTR_SHARED)
    local = driver.attribute(fn, _ATTR_LOCAL)
    if stats.spills_bytes is None:
        stats.spills_bytes = local
    threads = driver.attribute(fn, _ATTR_MAX_THREADS)
    stats.notes.append(f"driver: {local} bytes local memory per thread, at most {threads} threads per block")
