"""Backend registry: name -> "module:Class", imported on first use.

Importing this package imports no toolchain: the server lists and probes backends
without loading triton, CUTLASS or a CUDA context.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kfoundry.backends.base import Backend

REGISTRY: dict[str, str] = {
    "cpp": "kfoundry.backends.cpp:CppBackend",
    "cuda": "kfoundry.backends.cuda:CudaBackend",
    "cute": "kfoundry.backends.cute:CuteBackend",
    "helion": "kfoundry.backends.helion:HelionBackend",
    "hip": "kfoundry.backends.hip:HipBackend",
    "metal": "kfoundry.backends.metal:MetalBackend",
    "sycl": "kfoundry.backends.sycl:SyclBackend",
    "tilelang": "kfoundry.backends.tilelang:TileLangBackend",
    "triton": "kfoundry.backends.triton:TritonBackend",
}


class UnknownBackendError(ValueError):
    def __init__(self, name: str) -> None:
        known = ", ".join(sorted(REGISTRY))
        super().__init__(f"Unknown backend {name!r}. Known backends: {known}. Call the `backends` tool to see which run here.")
        self.name = name


@cache
def get_backend(name: str) -> Backend:
    """Return the backend instance registered under ``name``.

    Raises:
        UnknownBackendError: ``name`` is not registered.
    """
    target = REGISTRY.get(name)
    if target is None:
        raise UnknownBackendError(name)
    module_name, class_name = target.split(":")
    return getattr(import_module(module_name), class_name)()


def names() -> list[str]:
    return sorted(REGISTRY)


def all_backends() -> list[Backend]:
    """Every registered backend, in name order (their modules import no toolchain, so this is cheap)."""
    return [get_backend(name) for name in names()]
