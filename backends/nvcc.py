"""nvcc compile-only builds of the CUDA sources read out of a candidate without running it.

On a host without a GPU the ``cuda`` backend can still check a candidate: ``compile_only``
finds the CUDA source strings the candidate passes to ``load_cuda(...)`` or
``torch.utils.cpp_extension.load_inline(cuda_sources=...)`` with ``ast`` (the candidate is
never imported), compiles each with ``nvcc -cubin -arch=sm_90 -Xptxas -v`` and reports
per-kernel registers, spills and shared memory, with compiler messages located at
``candidate.py`` lines. Asked for by the trusted server; nvcc itself runs in a fresh sandbox
(``kfoundry.toolrun``) as ``gxx.build`` runs g++.

The pieces it builds on live beside it and are re-exported here: reading sources and kernel
signatures (``extract_units``, ``find_kernels``, shared with ``load_cuda``) in
``kfoundry.backends.cuda_sources``, the ptxas ``-v`` parser (NVRTC logs use the same format),
``c++filt`` demangling and ``cuobjdump -res-usage`` in ``kfoundry.backends.ptxas``, and the
allowed compiler options (``check_flags``, ``FlagError``) in ``kfoundry.backends.cuda_flags``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kfoundry.backends.cuda_flags import _ALLOWED_HINT, FlagError, check_flags  # noqa: F401 - re-exported
from kfoundry.backends.cuda_sources import (  # noqa: F401 - re-exported
    CANDIDATE_FILE,
    LOAD_INLINE_PREFIX,
    CudaUnit,
    KernelDecl,
    Param,
    Segment,
    extract_units,
    find_kernels,
    parse_param,
    strip_comments,
)
from kfoundry.backends.ptxas import (  # noqa: F401 - re-exported
    PtxasKernel,
    demangle,
    parse_ptxas,
    resource_usage,
    short_name,
)
from kfoundry.config import settings
from kfoundry.schema import Diagnostic, KernelStats
from kfoundry.toolrun import ToolStatus, run_tool

DEFAULT_ARCH = "sm_90"
#: torch.utils.cpp_extension.COMMON_NVCC_FLAGS
TORCH_NVCC_FLAGS = (
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
)
#: options that trade IEEE results for speed: what --use_fast_math turns on, bar -fmad (contraction is on by default)
_FAST_MATH = re.compile(r"^--?(use_fast_math|ftz=true|prec-div=false|prec-sqrt=false)$")


def fast_math_options(options: list[str]) -> list[str]:
    """The fast-math options among those the compiler was given (the build's own option list, not the source's text)."""
    return [o for o in options if _FAST_MATH.match(o)]


_NVCC_DIAG = re.compile(
    r"^(?P<file>[^\s(][^(]*?)\((?P<line>\d+)\):\s*(?P<sev>catastrophic error|error|warning|remark|note)(?:\s*#[\w-]+)?:\s*(?P<msg>.*)$"
)
_GCC_DIAG = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?:(?P<col>\d+):)?\s*(?P<sev>fatal error|error|warning|note):\s*(?P<msg>.*)$")
_TOOL_ERROR = re.compile(r"^(?P<tool>ptxas|nvcc|nvlink|fatbinary)\s+(?P<sev>fatal|error|warning)\s*:\s*(?P<msg>.*)$")


# -- toolchain facts ----------------------------------------------------------------------------


@cache
def nvcc_path() -> str | None:
    return shutil.which("nvcc")


@cache
def nvcc_version() -> str:
    """``Cuda compilation tools, release 13.0, V13.0.88`` or "" without nvcc."""
    exe = nvcc_path()
    if exe is None:
        return ""
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    release = [ln for ln in lines if "release" in ln]
    return (release or lines or [""])[-1]


@cache
def _torch_build_facts() -> tuple[list[str], str, str]:
    """(include dirs for <torch/extension.h>, the C++ standard load_inline uses, torch version)."""
    import sysconfig

    try:
        from torch.utils import cpp_extension

        dirs = list(cpp_extension.include_paths())
        text = Path(cpp_extension.__file__).read_text(encoding="utf-8", errors="replace")
        std = "c++20" if "-std=c++20" in text else "c++17"
        import torch

        version = str(torch.__version__)
    except Exception:  # noqa: BLE001 - no torch: load_inline sources cannot be checked, said in diagnostics
        return [], "c++17", ""
    py_include = sysconfig.get_paths().get("include")
    if py_include and Path(py_include, "Python.h").is_file():
        dirs.append(py_include)
    return dirs, std, version


# -- nvcc ---------------------------------------------------------------------------------------


def parse_nvcc_diagnostics(log: str, unit: CudaUnit, compiled_name: str) -> list[Diagnostic]:
    """nvcc/ptxas messages as diagnostics; lines of the compiled file are mapped back into candidate.py.

    Warnings from other files (torch's headers) are dropped; errors from anywhere are kept.
    """
    found: list[Diagnostic] = []
    for raw in log.splitlines():
        line = raw.strip()
        m = _NVCC_DIAG.match(line) or _GCC_DIAG.match(line)
        if m:
            sev = m["sev"]
            severity = "error" if "error" in sev else "warning" if sev == "warning" else "note"
            own = Path(m["file"].strip()).name == compiled_name
            if not own and severity != "error":
                continue
            file, lineno = unit.locate(int(m["line"])) if own else (m["file"].strip(), int(m["line"]))
            column = int(m["col"]) if "col" in m.groupdict() and m["col"] else None
            found.append(Diagnostic(file=file, line=lineno, column=column, severity=severity, message=m["msg"].strip()))  # type: ignore[arg-type]
        elif t := _TOOL_ERROR.match(line):
            severity = "warning" if t["sev"] == "warning" else "error"
            found.append(Diagnostic(file=CANDIDATE_FILE, line=unit.call_line, severity=severity, message=f"{t['tool']}: {t['msg'].strip()}"))  # type: ignore[arg-type]
    return found


def _host_limitation(diags: list[Diagnostic]) -> str | None:
    for d in diags:
        m = re.search(r'cannot open source file "([^"]+)"|([\w/.]+\.h): No such file', d.message)
        if m and d.file != CANDIDATE_FILE:
            return m.group(1) or m.group(2)
        if m and d.file == CANDIDATE_FILE and re.match(r"(torch|ATen|c10|cublas|cusparse|cudnn|cub|thrust|cutlass)", m.group(1) or ""):
            return m.group(1)
    return None


@dataclass
class UnitResult:
    ok: bool
    kernels: list[KernelStats]
    diagnostics: list[Diagnostic]
    seconds: float = 0.0
    cached: bool = False


def _unit_command(unit: CudaUnit, arch: str, src: str, out: str) -> list[str] | str:
    cmd = [nvcc_path() or "nvcc", "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-lineinfo"]
    if unit.kind == "load_inline":
        includes, std, _ = _torch_build_facts()
        if not includes:
            return "torch is not importable here, so <torch/types.h> (which load_inline prepends) cannot be found"
        cmd += [f"-std={std}", *TORCH_NVCC_FLAGS, f"-DTORCH_EXTENSION_NAME={unit.name}", "-DTORCH_API_INCLUDE_EXTENSION_H"]
        cmd += [f"-I{d}" for d in includes]
    else:
        cmd += ["-std=c++17"]
    # NVRTC spellings (--fmad=false) are nvcc's too; -std given by the candidate wins over ours.
    for flag in unit.flags:
        if m := re.match(r"^--?(?:arch|gpu-architecture)=(?:sm|compute)_(\w+)$", flag):
            cmd = [c if not c.startswith("-arch=") else f"-arch=sm_{m.group(1)}" for c in cmd]
            continue
        if flag.lstrip("-").startswith("std="):
            cmd = [c for c in cmd if not c.startswith("-std=")]
        cmd.append("-" + flag.lstrip("-") if flag.startswith("--std") else flag)
    return [*cmd, "-o", out, src]


def _cache_key(unit: CudaUnit, arch: str) -> str:
    h = hashlib.sha256()
    includes, std, torch_version = _torch_build_facts() if unit.kind == "load_inline" else ([], "", "")
    for part in ("nvcc-compile-only-1", nvcc_version(), arch, unit.kind, unit.name, " ".join(unit.flags), torch_version, std, *includes, unit.text):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def compile_unit(
    unit: CudaUnit, arch: str = DEFAULT_ARCH, *, timeout_s: float = 300.0
) -> UnitResult:
    """nvcc -cubin one unit in a fresh sandbox (or reuse the cached result of the same text and toolchain)."""
    compiled_name = f"{unit.name}.cu"
    key = _cache_key(unit, arch)
    root = settings().cache_dir / "cuda" / "nvcc"
    record = root / f"{key}.json"
    if record.is_file():
        try:
            saved = json.loads(record.read_text())
            return _unit_result(unit, compiled_name, saved["returncode"], saved["log"], float(saved["seconds"]), saved["names"], cached=True)
        except (OSError, ValueError, KeyError):
            pass  # a torn or older record is not an answer: the unit is built again and the record rewritten
    cmd = _unit_command(unit, arch, compiled_name, "kernel.cubin")
    if isinstance(cmd, str):
        return UnitResult(False, [], [Diagnostic(file=CANDIDATE_FILE, line=unit.call_line, message=f"compile-only cannot check this load_inline source here: {cmd}")])
    run = run_tool(cmd, files={compiled_name: unit.text}, outputs=["kernel.cubin"], timeout_s=timeout_s, label="nvcc")
    if run.status is not ToolStatus.ok and run.status is not ToolStatus.failed:
        # a cap or the clock stopped it: say so, and keep it out of the cache (a later, larger timeout may pass)
        diags = parse_nvcc_diagnostics(run.log, unit, compiled_name)
        return UnitResult(False, [], [*diags, Diagnostic(file=CANDIDATE_FILE, line=unit.call_line, message=run.message)], run.seconds)
    log = run.log[-60000:]
    returncode = run.returncode if run.returncode else (0 if "kernel.cubin" in run.outputs else 1)
    names = demangle([k.mangled for k in parse_ptxas(log)], sandboxed=True) if returncode == 0 else {}
    root.mkdir(parents=True, exist_ok=True)
    staged = record.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    staged.write_text(json.dumps({"returncode": returncode, "log": log, "seconds": run.seconds, "names": names}))
    os.replace(staged, record)
    return _unit_result(unit, compiled_name, returncode, log, run.seconds, names, cached=False)


def _unit_result(
    unit: CudaUnit, compiled_name: str, returncode: int, log: str, seconds: float, names: dict[str, str], *, cached: bool
) -> UnitResult:
    diags = parse_nvcc_diagnostics(log, unit, compiled_name)
    if returncode != 0:
        if not any(d.severity == "error" for d in diags):
            diags.append(Diagnostic(file=CANDIDATE_FILE, line=unit.call_line, message=log.strip()[-2000:] or f"nvcc exited with {returncode}"))
        missing = _host_limitation(diags)
        if missing is not None:
            diags.append(
                Diagnostic(
                    file=CANDIDATE_FILE, line=unit.call_line, severity="note",
                    message=f"compile-only host limitation: <{missing}> is not available on this GPU-less host (its CUDA toolkit or "
                    "CPU-only torch lacks it), so this source could not be checked here; the GPU host may build it",
                )
            )
        return UnitResult(False, [], diags, seconds, cached)
    kernels = []
    for k in parse_ptxas(log):
        full = names.get(k.mangled, k.mangled)
        notes = [f"{k.arch or DEFAULT_ARCH} cubin from nvcc (compile-only: no GPU here)"]
        if k.stack_bytes:
            notes.append(f"{k.stack_bytes} bytes stack frame")
        if k.spill_loads:
            notes.append(f"{k.spill_loads} bytes spill loads")
        if full != short_name(full):
            notes.append(full)
        kernels.append(
            KernelStats(
                name=short_name(full), registers=k.registers, spills_bytes=k.spill_stores, shared_memory_bytes=k.shared_bytes,
                build_s=0.0 if cached else round(seconds, 4), cached=cached, notes=notes,
            )
        )
    return UnitResult(True, kernels, diags, seconds, cached)


def compile_only(
    candidate: str, arch: str = DEFAULT_ARCH, *, timeout_s: float = 300.0
) -> tuple[list[KernelStats], list[str], bool]:
    """Check a candidate's CUDA sources with nvcc without running it: (kernels, diagnostics, ok).

    ``diagnostics`` are ``file:line: severity: message`` strings, located in candidate.py where
    the source is a literal (or a module-level string variable). ``ok`` is False when any source
    fails to compile, when nvcc is missing, or when no CUDA source could be read statically.
    """
    if nvcc_path() is None:
        return [], [f"{CANDIDATE_FILE}: error: compile-only needs nvcc on PATH and this host has none"], False
    units, diags = extract_units(candidate)
    if not units:
        if not any(d.severity == "error" for d in diags):
            diags.append(
                Diagnostic(
                    file=CANDIDATE_FILE, line=None,
                    message="no CUDA source found: pass the kernel source as a string literal (or a module-level string variable) to "
                    "kfoundry.backends.cuda.load_cuda(...) or torch.utils.cpp_extension.load_inline(cuda_sources=...)",
                )
            )
        return [], [str(d) for d in diags], False
    refused = False
    for unit in units:
        if unit.ignored_flags and unit.kind == "load_cuda":
            refused = True
            diags.append(Diagnostic(file=CANDIDATE_FILE, line=unit.call_line, message=f"load_cuda refuses options {unit.ignored_flags}: {_ALLOWED_HINT}"))
        elif unit.ignored_flags:
            diags.append(Diagnostic(file=CANDIDATE_FILE, line=unit.call_line, severity="note", message=f"compile-only ignored options {unit.ignored_flags}"))
    workers = max(1, min(len(units), os.cpu_count() or 1, 8))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda u: compile_unit(u, arch, timeout_s=timeout_s), units))
    kernels: list[KernelStats] = []
    for result in results:
        kernels += result.kernels
        diags += result.diagnostics
    ok = all(r.ok for r in results) and not refused
    return kernels, [str(d) for d in diags], ok


def main() -> None:  # pragma: no cover - manual use: python -m kfoundry.backends.nvcc candidate.py
    kernels, diags, ok = compile_only(Path(sys.argv[1]).read_text())
    print("\n".join(diags))
    for k in kernels:
        print(k.model_dump_json())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
