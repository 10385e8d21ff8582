"""Triton backend: real compilation on a CUDA device, Triton's interpreter on CPU-only hosts.

Nothing here imports triton at module level: the server probes with ``find_spec`` and
only workers import it (after ``TRITON_INTERPRET`` is decided by ``worker_env``).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar

from kfoundry.schema import KernelStats, ToolchainInfo

_launched: dict[str, Any] = {}
_patched: list[tuple[type, Any]] = []


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _jit_name(fn: Any) -> str:
    inner = getattr(fn, "fn", None)
    return str(getattr(inner, "__name__", None) or getattr(fn, "__name__", "triton_kernel"))


def _jit_classes() -> list[type]:
    classes: list[type] = []
    from triton.runtime.jit import JITFunction

    classes.append(JITFunction)
    try:
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    except ImportError:
        pass
    return classes


def _compiled_stats(fn: Any, name: str) -> list[KernelStats]:
    """Registers, spills, shared memory, warps and stages of every compiled specialisation."""
    found: list[KernelStats] = []
    for entry in getattr(fn, "device_caches", {}).values():
        cache = entry[0] if isinstance(entry, tuple) else entry
        for kernel in getattr(cache, "values", lambda: [])():
            meta = getattr(kernel, "metadata", None)
            found.append(
                KernelStats(
                    name=str(getattr(kernel, "name", name)),
                    registers=getattr(kernel, "n_regs", None),
                    spills_bytes=getattr(kernel, "n_spills", None),
                    shared_memory_bytes=getattr(meta, "shared", None),
                    num_warps=getattr(meta, "num_warps", None),
                    num_stages=getattr(meta, "num_stages", None),
                )
            )
    return found


class TritonBackend:
    name: ClassVar[str] = "triton"
    required_patterns: ClassVar[tuple[str, ...]] = (r"@\s*triton\.(jit|autotune)", )
    marker: ClassVar[str] = "a kernel decorated with @triton.jit, launched as kernel[grid](...)"
    oneshot: ClassVar[Path] = Path(__file__).resolve().parent.parent / "prompts" / "oneshot" / "triton.py"
    notes: ClassVar[str] = (
        "Write @triton.jit kernels and launch them from ModelNew.forward as kernel[grid](...). Inputs arrive on the "
        "job's device (CUDA on a GPU host, CPU tensors under the Triton interpreter on CPU-only hosts), so allocate "
        "outputs with torch.empty(..., device=x.device) and never hard-code 'cuda'. Use tl.constexpr BLOCK sizes "
        "(powers of two), masks for ragged edges, and accumulate reductions/dots in fp32."
    )

    def probe(self) -> ToolchainInfo:
        if importlib.util.find_spec("triton") is None:
            return ToolchainInfo(name=self.name, available=False, reason="the triton package is not installed", marker=self.marker)
        try:
            ver = version("triton")
        except PackageNotFoundError:
            ver = ""
        import torch

        if torch.cuda.is_available():
            return ToolchainInfo(name=self.name, available=True, version=ver, device="cuda:0", marker=self.marker)
        return ToolchainInfo(
            name=self.name, available=True, version=ver, device="cpu", interpreted=True, marker=self.marker,
            reason="no CUDA device: kernels run in Triton's interpreter (TRITON_INTERPRET=1) on CPU tensors; results are checked but timings are not representative",
        )

    def worker_env(self, device: str) -> dict[str, str]:
        return {"TRITON_INTERPRET": "1"} if device == "cpu" else {}

    def prepare_worker(self) -> None:
        """Record every launched JIT function so its kernels can be reported and recognised in traces."""
        import triton  # noqa: F401 - imported here so TRITON_INTERPRET is already set

        for cls in _jit_classes():
            if getattr(cls.run, "_kfoundry", False):
                continue
            original = cls.run

            def run(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
                name = _jit_name(self)
                _launched[name] = self
                if _instrumenting:
                    import torch

                    with torch.profiler.record_function(f"triton::{name}"):
                        return __original(self, *args, **kwargs)
                return __original(self, *args, **kwargs)

            run._kfoundry = True  # type: ignore[attr-defined]
            _patched.append((cls, original))
            cls.run = run  # type: ignore[method-assign]

    def is_own_kernel(self, name: str) -> bool:
        return name.startswith("triton::") or any(name == n or name.startswith(n + "_") for n in _launched)

    @contextmanager
    def instrument(self) -> Iterator[None]:
        global _instrumenting
        _instrumenting = True
        try:
            yield
        finally:
            _instrumenting = False

    def built_kernels(self) -> Iterator[KernelStats]:
        functions: dict[str, Any] = dict(_launched)
        module = sys.modules.get("candidate")
        if module is not None and "triton" in sys.modules:
            classes = tuple(_jit_classes())
            for value in vars(module).values():
                if isinstance(value, classes):
                    functions.setdefault(_jit_name(value), value)
        interpreted = _interpreting()
        for name, fn in functions.items():
            stats = [] if interpreted else _compiled_stats(fn, name)
            if stats:
                yield from stats
            else:
                note = "interpreted (TRITON_INTERPRET=1): no GPU compilation" if interpreted else "compiles on first launch"
                yield KernelStats(name=name, notes=[note])


_instrumenting = False
