"""CUDA backend: raw kernels through NVRTC in well under two seconds, and KernelBench's load_inline.

A candidate embeds CUDA C++ and calls ``load_cuda``::

    from kfoundry.backends.cuda import load_cuda
    mod = load_cuda(r'''
    extern "C" __global__ void scale(const float* x, float* y, float a, long long n) {
        long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
        if (i < n) y[i] = a * x[i];
    }
    ''')
    mod.scale(grid, block, x, y, 2.0, x.numel())   # shared_mem=0, stream=None (torch's current stream)

Every non-template ``__global__`` function is an attribute (``extern "C"`` ones by their name, C++
ones through NVRTC's lowered names). Tensors pass as device pointers, checked for device, dtype
against the pointer type, and contiguity; scalars are converted to the parsed C types.

Builds: NVRTC (``cuda.bindings`` when installed, else ``libnvrtc`` through ctypes) in a short-lived
child process, so a hostile source can neither crash nor read through the trusted server; the
image is cached by content hash, target architecture and NVRTC version under
``settings().cache_dir / "cuda"``. Inside a worker the build is requested from the server
(``{"op": "build_cuda", ...}``, answered by ``CudaBackend.build``); elsewhere it runs in-process.
Kernels are loaded with the driver API (``cuModuleLoadData``/``cuLaunchKernel``) on torch's
current stream, and report registers, local (spill) and shared memory from ``cuFuncGetAttribute``.

``torch.utils.cpp_extension.load_inline(cuda_sources=...)`` candidates run unchanged: inside a
worker the call is wrapped so the extension name carries a content hash (torch's cache is then
keyed by content), the build time is reported, and the module's functions open profiler ranges.

Without a GPU, ``compile_only`` (see ``kfoundry.backends.nvcc``) checks a candidate with nvcc.

The code is split by concern: ``kfoundry.backends.cuda_kernels`` (``load_cuda``, ``CudaModule``,
``CudaKernel``, argument checks), ``kfoundry.backends.cuda_build`` (``build_cuda``,
``build_cuda_request``, the NVRTC child process), ``kfoundry.backends.nvrtc`` (finding and binding
NVRTC), ``kfoundry.backends.cuda_headers`` (standard-header stand-ins) and
``kfoundry.backends.cuda_driver`` (the driver API). This module keeps the load_inline wrapper,
``compile_only`` and ``CudaBackend``, and re-exports the public names, so
``from kfoundry.backends.cuda import load_cuda`` keeps working.
"""

from __future__ import annotations

import ast
import hashlib
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from kfoundry.backends import cuda_kernels, embedded, nvcc
from kfoundry.backends.base import BuildRequest, BuildUnsupported, CompileOnlyOutcome, Resolve, Severity, SourceHit
from kfoundry.backends.cuda_build import (  # noqa: F401 - re-exported
    BUILD_OP,
    BUILD_TIMEOUT_S,
    DEFAULT_ARCH,
    MAX_SOURCE_BYTES,
    BuildError,
    CudaBuildOutcome,
    answer_build,
    build_cuda,
    build_cuda_request,
    check_arch,
    locate_source,
)
from kfoundry.backends.cuda_kernels import CudaKernel, CudaModule, load_cuda  # noqa: F401 - re-exported
from kfoundry.backends.nvcc import FlagError, KernelDecl  # noqa: F401 - FlagError re-exported
from kfoundry.backends.nvrtc import (  # noqa: F401 - re-exported
    BINDING_ENV,
    PROGRAM,
    CudaError,
    CudaUnavailable,
    NvrtcFacts,
    nvrtc_facts,
)
from kfoundry.schema import Bottleneck, KernelStats, ToolchainInfo

REASON_COMPILE_ONLY = "no CUDA device: compile works (nvcc found, compile-only to cubin for sm_90), verify/profile need a GPU"
REASON_NOTHING = "no CUDA device and no nvcc"


# -- load_inline -----------------------------------------------------------------------------------


class _Wrapped:
    """A load_inline module whose functions open a ``cuda::<function>`` profiler range per call."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._module, name)
        if not callable(attr) or not cuda_kernels._instrumented:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            import torch

            with torch.profiler.record_function(f"cuda::{name}"):
                return attr(*args, **kwargs)

        return call


def _as_text(sources: Any) -> str:
    if sources is None:
        return ""
    return sources if isinstance(sources, str) else "\n".join(str(s) for s in sources)


def _wrap_load_inline(original: Callable[..., Any]) -> Callable[..., Any]:
    import inspect

    signature = inspect.signature(original)

    def load_inline(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return original(*args, **kwargs)
        params = bound.arguments
        cuda_text = _as_text(params.get("cuda_sources"))
        cpp_text = _as_text(params.get("cpp_sources"))
        name = str(params.get("name", "extension"))
        if params.get("functions") and "PYBIND11_MODULE" not in cpp_text + cuda_text:
            # torch caches builds by extension name; a content hash in the name makes it a content cache.
            digest = hashlib.sha256()
            for part in (cpp_text, cuda_text, repr(params.get("functions")), repr(params.get("extra_cflags")), repr(params.get("extra_cuda_cflags"))):
                digest.update(part.encode())
                digest.update(b"\0")
            params["name"] = f"{name}_{digest.hexdigest()[:12]}"
        cached = _extension_exists(str(params["name"]), params.get("build_directory"))
        start = time.perf_counter()
        module = original(*bound.args, **bound.kwargs)
        seconds = time.perf_counter() - start
        decls = nvcc.find_kernels(cuda_text)
        cuda_kernels._own_names.update(d.name for d in decls)
        functions = params.get("functions") or []
        functions = [functions] if isinstance(functions, str) else list(functions)
        cuda_kernels._own_names.update(str(f) for f in functions)
        stats = nvcc.resource_usage(str(getattr(module, "__file__", "") or ""))
        note = "torch.utils.cpp_extension.load_inline" + (" (torch's extension cache)" if cached else "")
        if stats:
            for s in stats:
                s.build_s, s.cached = round(seconds, 4), cached
                s.notes.insert(0, note)
            cuda_kernels._built.extend(stats)
        else:
            for d in decls or [KernelDecl(str(f), None, False, False, str(f), 0) for f in functions]:
                cuda_kernels._built.append(KernelStats(name=d.name, build_s=round(seconds, 4), cached=cached, notes=[note]))
        return _Wrapped(module)

    return load_inline


def _extension_exists(name: str, build_directory: Any) -> bool:
    try:
        from torch.utils import cpp_extension

        directory = build_directory or cpp_extension._get_build_directory(name, verbose=False)
        return any(Path(directory).glob(f"{name}*.so"))
    except Exception:  # noqa: BLE001 - a private torch helper; not knowing only loses the 'cached' flag
        return False


def _builds_kernel(call: ast.Call, parts: list[str]) -> bool:
    last = parts[-1]
    return last == "load_cuda" or (last == "load_inline" and any(k.arg == "cuda_sources" for k in call.keywords))


def _base_name(event: str) -> str:
    short = nvcc.short_name(event.strip())
    return re.sub(r"<.*>$", "", short).split("::")[-1]


# -- the backend -----------------------------------------------------------------------------------


def compile_only(candidate: str, *, arch: str = DEFAULT_ARCH, timeout_s: float = 300.0) -> tuple[list[KernelStats], list[str], bool]:
    """nvcc compile-only of a candidate's CUDA sources (no GPU, candidate not executed); see nvcc.compile_only."""
    return nvcc.compile_only(candidate, arch, timeout_s=timeout_s)


class CudaBackend:
    name: ClassVar[str] = "cuda"
    required_patterns: ClassVar[tuple[str, ...]] = (r"\bload_cuda\s*\(|\bload_inline\s*\([\s\S]*?\bcuda_sources\b",)
    marker: ClassVar[str] = (
        "CUDA C++ __global__ kernels built with kfoundry.backends.cuda.load_cuda(...) "
        "(or torch.utils.cpp_extension.load_inline(cuda_sources=...))"
    )
    oneshot: ClassVar[Path] = Path(__file__).resolve().parent.parent / "prompts" / "oneshot" / "cuda.py"
    notes: ClassVar[str] = (
        "Prefer load_cuda: it compiles with NVRTC in well under two seconds and caches by content. Write "
        "extern \"C\" __global__ kernels and launch them from forward as mod.kernel(grid, block, *args, shared_mem=0); "
        "tensors pass as device pointers (device, dtype vs the pointer type, and contiguity are checked) and Python "
        "numbers as the parameter's C type, so use int/long long/float/double parameters and allocate outputs with "
        "torch.empty(..., device=x.device). NVRTC has no C++ standard library: <cstdint>, <cfloat>, <climits>, <cmath>, "
        "<cuda_fp16.h>, <cuda_bf16.h> and <cuda/std/...> work; avoid <vector>, <algorithm>, iostream. Builds use "
        "--std=c++17, full-precision math (--use_fast_math, half/bf16 types and TF32 need a relaxed precision policy: tf32, bf16 or fp16) and target the GPU's own "
        "architecture (sm_90 on H100/H200). Index with 64-bit integers when sizes can exceed 2^31, guard every thread "
        "against the tail, and accumulate reductions in fp32. KernelBench-style load_inline(cuda_sources=..., "
        "functions=[...]) also works but builds take tens of seconds."
    )
    rule_defaults: ClassVar[Mapping[str, Severity]] = {}

    def probe(self) -> ToolchainInfo:
        import torch

        nvcc_line = nvcc.nvcc_version()
        if torch.cuda.is_available():
            reasons: list[str] = []
            parts = [f"CUDA {torch.version.cuda}"]
            try:
                parts.append(nvrtc_facts().label)
            except CudaUnavailable as exc:
                reasons.append(f"load_cuda {exc}")
            if nvcc_line:
                parts.append(f"nvcc: {nvcc_line}")
            else:
                reasons.append("load_inline unavailable: nvcc is not on PATH")
            if len(reasons) == 2:
                return ToolchainInfo(
                    name=self.name, available=False, device="cuda:0", marker=self.marker, version="; ".join(parts),
                    reason="a CUDA device is present but neither NVRTC (load_cuda) nor nvcc (load_inline) is: " + "; ".join(reasons),
                )
            return ToolchainInfo(name=self.name, available=True, version="; ".join(parts), device="cuda:0", marker=self.marker, reason="; ".join(reasons))
        if nvcc.nvcc_path() is not None:
            extra: dict[str, Any] = {"compile_only": True} if "compile_only" in ToolchainInfo.model_fields else {}
            return ToolchainInfo(name=self.name, available=False, reason=REASON_COMPILE_ONLY, version=nvcc_line, marker=self.marker, **extra)
        return ToolchainInfo(name=self.name, available=False, reason=REASON_NOTHING, marker=self.marker)

    def worker_env(self, device: str) -> dict[str, str]:
        return {}

    def cache_env(self, shared: Path) -> dict[str, str]:
        # load_cuda images are cached by the server; load_inline candidates use torch's extension cache.
        return {"TORCH_EXTENSIONS_DIR": str(shared / "torch_extensions")}

    def marker_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        return embedded.marker_hits(tree, resolve, _builds_kernel)

    def precision_dtype(self, name: str) -> str | None:
        return None  # the kernel is CUDA C++ text, not Python: see precision_hits

    def precision_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        return embedded.kernel_precision(tree, resolve, _builds_kernel)

    def source_hint(self, source: str, regime: Bottleneck) -> str | None:
        if regime is Bottleneck.compute and not re.search(r"wmma|mma\.sync|mma_sync|cute::", source):
            return "Use tensor cores (WMMA or mma.sync) on shared-memory tiles instead of scalar FMAs"
        return None

    def build(self, request: BuildRequest) -> CudaBuildOutcome | BuildUnsupported:
        """NVRTC build of a worker's ``load_cuda`` source, its messages located in candidate.py when the source is there."""
        refused = request.refusal(self.name, BUILD_OP)
        if refused is not None:
            return refused
        return answer_build(request.message, request.candidate)

    def warm(self, device: str) -> None:
        """Nothing to preload: NVRTC runs on the trusted side and the driver API loads on the first launch."""

    def prepare_worker(self) -> None:
        """Wrap ``load_inline`` so KernelBench-style candidates are cached by content, timed and profiled."""
        from torch.utils import cpp_extension

        if not getattr(cpp_extension.load_inline, "_kfoundry_cuda", False):
            wrapped = _wrap_load_inline(cpp_extension.load_inline)
            wrapped._kfoundry_cuda = True  # type: ignore[attr-defined]
            cpp_extension.load_inline = wrapped

    def is_own_kernel(self, name: str) -> bool:
        if name.startswith("cuda::"):
            return True
        return name in cuda_kernels._own_names or _base_name(name) in cuda_kernels._own_names

    @contextmanager
    def instrument(self) -> Iterator[None]:
        cuda_kernels._instrumented = True
        try:
            yield
        finally:
            cuda_kernels._instrumented = False

    def built_kernels(self) -> Iterator[KernelStats]:
        yield from cuda_kernels._built

    def compile_only(
        self, candidate: str, *, timeout_s: float = 300.0, arch: str = DEFAULT_ARCH
    ) -> CompileOnlyOutcome:
        """Check ``candidate`` with nvcc, without a GPU and without running it."""
        kernels, diagnostics, ok = compile_only(candidate, arch=arch, timeout_s=timeout_s)
        return CompileOnlyOutcome(ok=ok, kernels=kernels, diagnostics=diagnostics)
