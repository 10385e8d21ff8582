"""HIP backend (AMD GPUs): KernelBench-style ``load_inline`` candidates, checked with ``hipcc`` on any host.

A HIP candidate is the KernelBench shape: ``__global__`` kernels and a host wrapper in the strings
it passes to ``torch.utils.cpp_extension.load_inline`` (``cpp_sources`` with ``os.environ["CXX"] =
"hipcc"``, or ``cuda_sources``, which ROCm PyTorch hipifies). On a ROCm PyTorch host with an AMD GPU
torch builds and runs it itself.

Without the device, ``compile_only`` reads those strings with ``ast`` (the candidate never runs),
compiles each that holds a ``__global__`` function with ``hipcc --cuda-device-only`` for one
offload target in a fresh sandbox, locates the compiler's messages at candidate.py lines, and
reports per kernel what ``-Rpass-analysis=kernel-resource-usage`` prints: VGPRs (as registers),
SGPRs, AGPRs, scratch, spills, LDS bytes and occupancy. The target is ``KFOUNDRY_HIP_ARCH`` when
set, else gfx942 (MI300, CDNA3) when the compiler knows it, else the nearest CDNA target it does
know (Debian bookworm's clang 15 stops at gfx940).

Two host workarounds keep torch's headers (which load_inline prepends) compiling under that Debian
toolchain: the check uses ``-std=c++17`` (clang 15 crashes parsing torch 2.13's headers as c++20,
torch's own choice), and where rocThrust is not installed ``hip_include/thrust/complex.h``, a
``std::complex`` stand-in, satisfies the include torch makes under HIP. Results are cached by
command, source and hipcc version under ``settings().cache_dir / "hip"``.

On a ROCm host the worker side adds nothing: torch's load_inline builds the candidate itself, and
its kernels are not yet named in profiler ranges (``instrument`` is a no-op there).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import ClassVar

from kfoundry.backends import device_units, embedded
from kfoundry.backends.base import BuildRequest, BuildUnsupported, CompileOnlyOutcome, Resolve, Severity, SourceHit
from kfoundry.backends.cuda_sources import CANDIDATE_FILE, CudaUnit
from kfoundry.backends.nvcc import _torch_build_facts
from kfoundry.backends.ptxas import demangle
from kfoundry.config import settings
from kfoundry.schema import Bottleneck, Diagnostic, KernelStats, ToolchainInfo

ARCH_ENV = "KFOUNDRY_HIP_ARCH"
DEFAULT_ARCH = "gfx942"
#: CDNA targets tried, newest first, when the default is unknown to the installed compiler
_FALLBACK_ARCHS = ("gfx942", "gfx941", "gfx940", "gfx90a")
_ARCH = re.compile(r"^gfx[0-9a-f]{3,4}(?::[\w]+[+-])*$")
#: hipcc picks the NVIDIA path when nvcc is on PATH unless told otherwise
_ENV = {"HIP_PLATFORM": "amd"}
_SPECS = (
    device_units.UnitSpec("load_inline", 1, "cpp_sources", prefix="#include <torch/extension.h>\n", needs=r"__global__"),
    device_units.UnitSpec("load_inline", 2, "cuda_sources", prefix="#include <torch/types.h>\n#include <hip/hip_runtime.h>\n",
                          needs=r"__global__"),
)
_REMARK = re.compile(r"remark:\s+(?P<key>[A-Za-z][\w ]*?(?: \[[^\]]*\])?):\s*(?P<value>\S+)\s+\[-Rpass-analysis=kernel-resource-usage\]")
#: HIP's own reduced-precision spellings, beyond the CUDA ones the shared scan knows (__half, __float2half, ...)
_HIP_PRECISION = [(re.compile(p), kind, what) for p, kind, what in (
    (r"\b__hip_bfloat162?\b|\bhip_bfloat16\b|\b__float2bfloat16\b", "bf16", "HIP bfloat16 type"),
    (r"\b__builtin_amdgcn_mfma_\w*bf16\w*", "bf16", "bfloat16 MFMA intrinsic"),
    (r"\b__builtin_amdgcn_mfma_\w*(?<!b)f16\w*", "fp16", "float16 MFMA intrinsic"),
    (r"\b__builtin_amdgcn_mfma_\w*(?:fp8|bf8)\w*", "fp8", "float8 MFMA intrinsic"),
    (r"\b__builtin_amdgcn_mfma_\w*xf32\w*", "tf32", "xf32 MFMA intrinsic"),
    (r"-ffp-contract=fast\b", "fast_math", "fast-math flag"),
)]
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
#: torch's headers include rocThrust's <thrust/complex.h> under HIP; hosts without rocThrust get this std::complex stand-in
_STAND_IN = Path(__file__).resolve().parent / "hip_include"


@cache
def hipcc_path() -> str | None:
    return shutil.which("hipcc")


def _hipcc(args: list[str], arch: str) -> subprocess.CompletedProcess[str] | None:
    """hipcc on fixed input in the trusted process (no candidate text): version and target checks."""
    exe = hipcc_path()
    if exe is None:
        return None
    env = {**os.environ, **_ENV, "HCC_AMDGPU_TARGET": arch}  # without a target hipcc asks rocm_agent_enumerator for the GPU
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None


@cache
def hipcc_version() -> str:
    """``HIP version: 5.2.21153-0; Debian clang version 15.0.6``, or "" without hipcc."""
    run = _hipcc(["--version"], DEFAULT_ARCH)
    if run is None:
        return ""
    lines = [ln.strip() for ln in run.stdout.splitlines() if ln.strip()]
    return "; ".join(ln for ln in lines if "version" in ln.lower())[:200]


@cache
def _accepts(arch: str) -> bool:
    run = _hipcc(["--offload-arch=" + arch, "--cuda-device-only", "-c", "-x", "hip", "/dev/null", "-o", "/dev/null"], arch)
    return run is not None and run.returncode == 0


def target_arch() -> tuple[str, str]:
    """(offload target, why that one): ``KFOUNDRY_HIP_ARCH`` when set, else the newest CDNA target hipcc knows."""
    configured = os.environ.get(ARCH_ENV, "").strip()
    if configured:
        return configured, f"{ARCH_ENV}={configured}"
    for arch in _FALLBACK_ARCHS:
        if _accepts(arch):
            why = "default" if arch == DEFAULT_ARCH else f"{DEFAULT_ARCH} is unknown to this hipcc; {arch} is the newest CDNA target it knows"
            return arch, why
    return DEFAULT_ARCH, "default"


def _command(arch: str) -> device_units.Command:
    def command(u: CudaUnit, src: str, out: str) -> list[str] | str:
        cmd = [hipcc_path() or "hipcc", f"--offload-arch={arch}", "--cuda-device-only", "-c", "-x", "hip", "-O3",
               "-Rpass-analysis=kernel-resource-usage", "-fno-crash-diagnostics"]
        includes, _, _ = _torch_build_facts()
        if not includes:
            return "torch is not importable here, so <torch/extension.h> (which load_inline prepends) cannot be found"
        if not any(Path(d, "thrust", "complex.h").is_file() for d in ("/usr/include", "/opt/rocm/include")):
            cmd.append(f"-I{_STAND_IN}")
        # c++17, not torch's own c++20: Debian's clang 15 crashes parsing torch 2.13's headers as c++20
        cmd += ["-std=c++17", f"-DTORCH_EXTENSION_NAME={u.name}", "-DTORCH_API_INCLUDE_EXTENSION_H", *[f"-I{d}" for d in includes]]
        return [*cmd, "-o", out, src]

    return command


def parse_resource_usage(log: str) -> list[dict[str, str]]:
    """The ``kernel-resource-usage`` remarks of a clang AMDGPU build, one dict per kernel (key -> value as printed)."""
    kernels: list[dict[str, str]] = []
    for m in _REMARK.finditer(log):
        key, value = m["key"].strip(), m["value"]
        if key == "Function Name":
            kernels.append({"name": value})
        elif kernels:
            kernels[-1][key] = value
    return kernels


def _int(record: dict[str, str], key: str) -> int | None:
    value = record.get(key)
    return int(value) if value is not None and value.isdigit() else None


def _stats(records: list[dict[str, str]], arch: str, seconds: float, *, cached: bool = False) -> list[KernelStats]:
    names = demangle([r["name"] for r in records], sandboxed=True)
    kernels = []
    for r in records:
        full = names.get(r["name"], r["name"])
        notes = [f"{arch} code object from hipcc (compile-only: no ROCm device here)"]
        notes += [f"{key} {r[key]}" for key in ("SGPRs", "AGPRs", "ScratchSize [bytes/lane]", "Occupancy [waves/SIMD]", "SGPRs Spill") if key in r]
        if full != r["name"]:
            notes.append(full)
        vgpr_spill = _int(r, "VGPRs Spill")
        kernels.append(
            KernelStats(
                name=re.sub(r"\(.*$", "", full).split("::")[-1], registers=_int(r, "VGPRs"),
                # a spilled VGPR is 4 bytes per lane in scratch
                spills_bytes=None if vgpr_spill is None else 4 * vgpr_spill, shared_memory_bytes=_int(r, "LDS Size [bytes/block]"),
                build_s=round(seconds, 4), cached=cached, notes=notes,
            )
        )
    return kernels


def compile_only(candidate: str, *, timeout_s: float = 300.0, arch: str | None = None) -> CompileOnlyOutcome:
    """Check a candidate's HIP sources with hipcc, device code only, without running it."""
    if hipcc_path() is None:
        return CompileOnlyOutcome(ok=False, diagnostics=[f"{CANDIDATE_FILE}: error: compile-only needs hipcc on PATH and this host has none"])
    arch = arch or target_arch()[0]
    if not _ARCH.match(arch):
        return CompileOnlyOutcome(ok=False, diagnostics=[f"{CANDIDATE_FILE}: error: {arch!r} is not an AMDGPU target such as gfx942 or gfx90a"])
    units, diags = device_units.extract(candidate, _SPECS)
    if not units:
        if not any(d.severity == "error" for d in diags):
            diags.append(Diagnostic(file=CANDIDATE_FILE, message="no HIP source found: pass __global__ kernels as a string literal (or a "
                                    "module-level string variable) to torch.utils.cpp_extension.load_inline(cpp_sources=... or cuda_sources=...)"))
        return CompileOnlyOutcome(ok=False, diagnostics=[str(d) for d in diags])
    kernels: list[KernelStats] = []
    ok = True
    env = {**_ENV, "HCC_AMDGPU_TARGET": arch}
    for done in device_units.compile_units(units, suffix=".hip", command=_command(arch), output="kernel.o", env=env, label="hipcc",
                                           timeout_s=timeout_s, cache=settings().cache_dir / "hip", toolchain=hipcc_version()):
        diags += done.diagnostics
        if done.run is None or not done.ok:
            ok = False
            missing = device_units.missing_header(done.diagnostics)
            if missing is not None:
                diags.append(Diagnostic(
                    file=CANDIDATE_FILE, line=done.unit.call_line, severity="note",
                    message=f"compile-only host limitation: <{missing}> is not installed on this host, so this source could not be "
                    "checked here; a ROCm host may build it",
                ))
            continue
        kernels += _stats(parse_resource_usage(done.run.log), arch, done.run.seconds, cached=done.cached)
    return CompileOnlyOutcome(ok=ok, kernels=kernels, diagnostics=[str(d) for d in diags])


def _builds_kernel(call: ast.Call, parts: list[str]) -> bool:
    return parts[-1] == "load_inline"


def _rocm_device() -> bool:
    import torch

    return bool(getattr(torch.version, "hip", None)) and torch.cuda.is_available()


class HipBackend:
    name: ClassVar[str] = "hip"
    required_patterns: ClassVar[tuple[str, ...]] = (r"\bload_inline\s*\(", r"__global__")
    marker: ClassVar[str] = (
        "HIP __global__ kernels built with torch.utils.cpp_extension.load_inline(cpp_sources=..., functions=[...]) "
        "with os.environ[\"CXX\"] = \"hipcc\" (or cuda_sources=..., which ROCm PyTorch hipifies)"
    )
    oneshot: ClassVar[Path] = Path(__file__).resolve().parent.parent / "prompts" / "oneshot" / "hip.py"
    notes: ClassVar[str] = (
        "Write HIP C++: #include <hip/hip_runtime.h>, __global__ kernels launched with hipLaunchKernelGGL or <<<grid, block>>> "
        "on at::hip::getCurrentHIPStream() (or the default stream) from a host function taking and returning torch::Tensor, listed "
        "in functions=[...]. AMD GPUs run 64-lane wavefronts (CDNA: MI200 gfx90a, MI300 gfx942): use block sizes that are "
        "multiples of 64, warp-level code assumes warpSize == 64 (__shfl_down with width 64, 64-bit ballot masks), and LDS "
        "(__shared__) is 64 KiB per workgroup. Keep VGPR use low for occupancy (check registers in compile's report); "
        "accumulate in fp32; index with 64-bit integers past 2^31 elements. Strict precision means no _Float16/__half/"
        "__hip_bfloat16, no MFMA f16/bf16/xf32 intrinsics and no -ffast-math. Without an AMD GPU, compile checks device code "
        "with hipcc (compile-only) and reports VGPRs, spills and LDS bytes; verify and profile need a ROCm host."
    )
    rule_defaults: ClassVar[Mapping[str, Severity]] = {}
    #: what a translation from another backend must change, by source backend (rendered with the source's notes)
    translate_from: ClassVar[Mapping[str, str]] = {
        "cuda": (
            "CUDA to HIP: keep the kernel bodies (threadIdx/blockIdx/__syncthreads/__shared__ are the same); include "
            "<hip/hip_runtime.h> instead of <cuda_runtime.h>; rename the runtime API (cudaMalloc -> hipMalloc, cudaStream_t -> "
            "hipStream_t, cudaGetLastError -> hipGetLastError, at::cuda::getCurrentCUDAStream -> at::hip::getCurrentHIPStream, "
            "cuBLAS -> hipBLAS); launch with hipLaunchKernelGGL or <<<...>>>. A load_cuda kernel becomes a load_inline extension: "
            "write a torch::Tensor host wrapper for each launch, set os.environ[\"CXX\"] = \"hipcc\" and list the wrappers in "
            "functions=[...]. Re-check everything that assumed 32-lane warps: warpSize is 64, __shfl_*_sync masks become "
            "__shfl_* over 64 lanes, __ballot returns a 64-bit mask, and warp-per-row reductions need a 6-step shuffle tree. "
            "WMMA/mma.sync has no HIP spelling: use rocWMMA or __builtin_amdgcn_mfma_* (needs a relaxed precision policy for "
            "f16/bf16). Retune block sizes to multiples of 64 and watch VGPRs in compile's report for occupancy."
        ),
    }

    def probe(self) -> ToolchainInfo:
        version = hipcc_version()
        if hipcc_path() is None:
            return ToolchainInfo(name=self.name, available=False, marker=self.marker,
                                 reason="no ROCm device and no hipcc on PATH (Debian/Ubuntu: apt-get install hipcc gives compile-only checks)")
        arch, why = target_arch()
        if _rocm_device():
            return ToolchainInfo(name=self.name, available=True, device="cuda:0", version=version, marker=self.marker,
                                 reason=f"ROCm PyTorch builds load_inline candidates with hipcc; compile-only target {arch} ({why})")
        return ToolchainInfo(
            name=self.name, available=False, compile_only=True, version=version, marker=self.marker,
            reason=f"no ROCm device: compile works (hipcc, device code for {arch}: {why}), verify/profile need an AMD GPU with ROCm PyTorch",
        )

    def worker_env(self, device: str) -> dict[str, str]:
        return {}

    def cache_env(self, shared: Path) -> dict[str, str]:
        return {"TORCH_EXTENSIONS_DIR": str(shared / "torch_extensions")}

    def is_own_kernel(self, name: str) -> bool:
        return name.startswith("hip::")

    def marker_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        hits = embedded.marker_hits(tree, resolve, _builds_kernel)
        if hits:
            return hits
        sources = (n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))
        if not any(re.search(r"__global__", _COMMENT.sub("", s)) for s in sources):
            return [SourceHit(0, "no __global__ kernel in the sources passed to load_inline")]
        return []

    def precision_dtype(self, name: str) -> str | None:
        return None  # the kernel is HIP C++ text: see precision_hits

    def precision_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        if not embedded.build_calls(tree, resolve, _builds_kernel):
            return []
        return embedded.kernel_precision(tree, resolve, _builds_kernel) + device_units.string_hits(tree, _HIP_PRECISION)

    def source_hint(self, source: str, regime: Bottleneck) -> str | None:
        if regime is Bottleneck.compute and "__builtin_amdgcn_mfma" not in source and "rocwmma" not in source:
            return "Use the matrix cores (rocWMMA or __builtin_amdgcn_mfma_* on LDS tiles) instead of scalar FMAs"
        return None

    def build(self, request: BuildRequest) -> BuildUnsupported:
        return BuildUnsupported.because(self.name, "ROCm PyTorch builds load_inline candidates inside the worker")

    def compile_only(self, candidate: str, *, timeout_s: float = 300.0) -> CompileOnlyOutcome:
        """Check ``candidate`` with hipcc, without an AMD GPU and without running it."""
        return compile_only(candidate, timeout_s=timeout_s)

    def warm(self, device: str) -> None:
        """Nothing to preload: torch imports its extension builder when the candidate calls load_inline."""

    def prepare_worker(self) -> None:
        """Nothing to patch: ROCm PyTorch's load_inline builds HIP candidates as they are."""

    @contextmanager
    def instrument(self) -> Iterator[None]:
        yield

    def built_kernels(self) -> Iterator[KernelStats]:
        yield from ()
