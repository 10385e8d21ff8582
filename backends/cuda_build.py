"""NVRTC builds on the trusted side: ``build_cuda``, and ``build_cuda_request`` answering a worker.

``build_cuda`` checks the options against the allowed set and compiles in a short-lived child
process (``_child_main``, run as ``python -c "from kfoundry.backends.cuda_build import _child_main;
_child_main()"`` in a fresh sandbox, ``kfoundry.toolrun``), so a hostile source can neither crash nor
read through the trusted server; the image is cached by content hash, target architecture and NVRTC
version under ``settings().cache_dir / "cuda"``. Inside a worker ``load_cuda`` requests the build
from the server (``{"op": "build_cuda", ...}``, answered by ``CudaBackend.build`` through ``answer_build``;
``build_cuda_request`` gives the same answer as JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from kfoundry.backends import nvcc
from kfoundry.backends.base import TrustedBuild
from kfoundry.backends.cuda_headers import (
    _CCCL_HEADERS,
    _HEADERS_VERSION,
    _VIRTUAL_HEADERS,
)
from kfoundry.backends.cuda_sources import _literal_line
from kfoundry.backends.nvcc import FlagError
from kfoundry.backends.nvrtc import (
    BINDING_ENV,
    PROGRAM,
    CudaError,
    CudaUnavailable,
    NvrtcFacts,
    _nvrtc,
    nvrtc_facts,
)
from kfoundry.config import settings
from kfoundry.schema import Diagnostic
from kfoundry.toolrun import run_tool

MAX_SOURCE_BYTES = 1 << 20
BUILD_TIMEOUT_S = 120.0
#: the wire op a worker's load_cuda sends to ask the server for this build
BUILD_OP = "build_cuda"
DEFAULT_ARCH = nvcc.DEFAULT_ARCH
#: the NVRTC child's files in its work directory
_REQUEST, _RESULT, _IMAGE = "request.json", "result.json", "image.bin"
_ARCH = re.compile(r"^(sm|compute)_(\d{2,3})([af]?)$")


class BuildError(RuntimeError):
    """The CUDA source did not compile; ``diagnostics`` carries NVRTC's messages."""

    def __init__(self, message: str, diagnostics: list[Diagnostic]) -> None:
        super().__init__(message)
        self.diagnostics = diagnostics


class CudaBuildOutcome(TrustedBuild):
    """An NVRTC build of a cubin (or PTX) image."""

    artefact_fields: ClassVar[tuple[str, ...]] = ("image",)

    image: str = Field(default="", description="Path of the cubin (or PTX) when ok.")
    image_kind: str = Field(default="cubin", description="'cubin', or 'ptx' when NVRTC does not know the device's architecture.")
    lowered: dict[str, str] = Field(default_factory=dict, description="Kernel name -> symbol in the image.")
    ptxas: list[dict[str, Any]] = Field(default_factory=list, description="Per-kernel ptxas -v facts (mangled name, registers, spills, smem).")
    arch: str = ""
    toolchain: str = ""
    options: list[str] = Field(default_factory=list)
    math_options: list[str] = Field(
        default_factory=list, description="Fast-math options NVRTC was given (--use_fast_math, --ftz=true, ...), from the build's option list.",
    )


def _math_warning(options: list[str], label: str, line: int | None) -> list[Diagnostic]:
    if not options:
        return []
    message = (f"built with fast-math options ({', '.join(options)}): allowed, but under the strict policy the verdict checks the "
               "error against the float64 oracle and the IEEE results (NaN/inf, -0.0, subnormals) the reference defines")
    return [Diagnostic(file=label, line=line, severity="warning", message=message)]


def check_arch(arch: str) -> str:
    if not _ARCH.match(arch):
        raise FlagError(f"architecture {arch!r} is not of the form sm_90, sm_90a or compute_90")
    return arch


def _split_arch(options: list[str], arch: str) -> tuple[list[str], str]:
    """Take an -arch/--gpu-architecture option out of ``options`` (it overrides ``arch``)."""
    rest: list[str] = []
    for opt in options:
        m = re.match(r"^--?(?:arch|gpu-architecture)=(\S+)$", opt)
        if m:
            arch = check_arch(m.group(1))
        else:
            rest.append(opt)
    return rest, arch


def _for_nvrtc(options: list[str]) -> list[str]:
    """nvcc spellings NVRTC rejects: -O1..3 (NVRTC always optimises fully), -O0, and nvcc-only extensions."""
    out: list[str] = []
    for opt in options:
        if re.fullmatch(r"-O[1-3]|--?(expt-relaxed-constexpr|expt-extended-lambda|extended-lambda)", opt):
            continue
        out.append("--ptxas-options=-O0" if opt == "-O0" else opt)
    return out


def _resolve_arch(arch: str, supported: tuple[int, ...]) -> tuple[str, bool]:
    """(NVRTC -arch value, emit PTX): a cubin for a known architecture, else PTX for the newest one below it."""
    m = _ARCH.match(arch)
    assert m is not None
    number = int(m.group(2))
    if m.group(1) == "compute":
        return arch, True
    if not supported or number in supported:
        return arch, False
    lower = [a for a in supported if a <= number]
    return f"compute_{max(lower) if lower else min(supported)}", True


def _name_expressions(source: str) -> list[str]:
    """C++ (not extern "C") kernels need NVRTC name expressions to find their mangled names."""
    return [d.qualified for d in nvcc.find_kernels(source) if not d.extern_c and not d.template and d.params is not None]


def _cache_key(source: str, options: list[str], facts: NvrtcFacts, exprs: list[str]) -> str:
    digest = hashlib.sha256()
    parts = ("nvrtc", _HEADERS_VERSION, facts.label.split(" via ")[0], " ".join(facts.includes), " ".join(options), " ".join(exprs), source)
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def _diagnostics(log: str, source: str, line: int | None, label: str) -> list[Diagnostic]:
    unit = nvcc.CudaUnit(kind="load_cuda", name="kernel", segments=[nvcc.Segment(source, line)], flags=[], call_line=line or 1)
    found = nvcc.parse_nvcc_diagnostics(log, unit, PROGRAM)
    for d in found:
        if d.file == nvcc.CANDIDATE_FILE:
            d.file = label
        elif d.file == f"{unit.name}.cu":
            d.file = PROGRAM if line is None else label
    return found


def locate_source(text: str, source: str) -> int | None:
    """Line (1-based) of ``text`` where the string ``source`` starts, when ``text`` holds it verbatim."""
    import ast

    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        tree = None
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == source:
                line = _literal_line(text, node)
                if line is not None:
                    return line
    at = text.find(source) if source else -1
    return text[:at].count("\n") + 1 if at >= 0 else None


def build_cuda(
    source: str,
    options: list[str] | None = None,
    *,
    arch: str = DEFAULT_ARCH,
    line: int | None = None,
    file_label: str = PROGRAM,
    timeout_s: float = BUILD_TIMEOUT_S,
) -> CudaBuildOutcome:
    """Compile ``source`` with NVRTC into a cubin for ``arch`` (or return the cached one).

    ``line`` is where the source starts in ``file_label`` (candidate.py), so messages point there.
    NVRTC runs in a child process in a fresh sandbox (``kfoundry.toolrun``): ``#include "/etc/shadow"``
    or a server file is "No such file", and the build caps and ``timeout_s`` bound it.

    Raises:
        FlagError: an option or the architecture is not allowed.
        SandboxUnavailable: no usable bubblewrap and no ``KFOUNDRY_UNSAFE_NO_SANDBOX=1``.
    """
    opts, arch = _split_arch(nvcc.check_flags(list(options or [])), check_arch(arch))
    opts = _for_nvrtc(opts)
    label = file_label if line is not None else PROGRAM
    try:
        facts = nvrtc_facts()
    except CudaUnavailable as exc:
        return CudaBuildOutcome(ok=False, key="", arch=arch, diagnostics=[Diagnostic(file=label, line=line, message=str(exc))], log=str(exc))
    target, ptx = _resolve_arch(arch, facts.archs)
    full = [f"-arch={target}", "--std=c++17", "-lineinfo", *(f"-I{d}" for d in facts.includes), *opts]
    if not ptx:
        full.append("--ptxas-options=-v")
    if any(o.lstrip("-").startswith("std=") for o in opts):
        full.remove("--std=c++17")
    exprs = _name_expressions(source)
    key = _cache_key(source, full, facts, exprs)
    root = settings().cache_dir / "cuda"
    final = root / key
    meta_path = final / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            cached = CudaBuildOutcome.model_validate({**meta, "cached": True, "seconds": 0.0, "key": key})
            cached.diagnostics = _math_warning(cached.math_options, label, line)
            return cached
        except (OSError, ValueError):
            pass
    if len(source.encode()) > MAX_SOURCE_BYTES:
        msg = f"CUDA source is {len(source.encode())} bytes; the limit is {MAX_SOURCE_BYTES}"
        return CudaBuildOutcome(ok=False, key=key, arch=arch, diagnostics=[Diagnostic(file=label, line=line, message=msg)], log=msg)
    headers = dict(_VIRTUAL_HEADERS)
    if any(d.endswith("cccl") for d in facts.includes):
        headers.update(_CCCL_HEADERS)
    start = time.perf_counter()
    result = _compile_in_child(source, full, headers, exprs, ptx, timeout_s)
    if not result.get("ok") and exprs and result.get("status") == "compiled-with-error" and _blame_expressions(result.get("log", ""), source):
        # A kernel in a scope the parser misread: compile without name expressions rather than fail.
        exprs = []
        result = _compile_in_child(source, full, headers, exprs, ptx, timeout_s)
    seconds = time.perf_counter() - start
    log = str(result.get("log", ""))[-20000:]
    diags = _diagnostics(log, source, line, label)
    toolchain = facts.label
    if not result.get("ok"):
        if not any(d.severity == "error" for d in diags):
            diags.append(Diagnostic(file=label, line=line, message=(log.strip() or str(result.get("error", "NVRTC failed")))[-2000:]))
        return CudaBuildOutcome(ok=False, key=key, arch=arch, toolchain=toolchain, seconds=seconds, diagnostics=diags, log=log, options=full)
    kind = "ptx" if ptx else "cubin"
    final.mkdir(parents=True, exist_ok=True)
    image = final / f"image.{kind}"
    staged = final / f".image.{os.getpid()}.{threading.get_ident()}.{kind}"
    staged.write_bytes(result["image"])
    os.chmod(staged, 0o644)
    os.replace(staged, image)
    kernels = [k.__dict__ for k in nvcc.parse_ptxas(log)]
    lowered = {expr.split("::")[-1]: name for expr, name in dict(result.get("lowered", {})).items()}
    outcome = CudaBuildOutcome(
        ok=True, key=key, image=str(image), image_kind=kind, lowered=lowered, ptxas=kernels, arch=target, toolchain=toolchain,
        seconds=seconds, diagnostics=diags + _math_warning(nvcc.fast_math_options(full), label, line), log=log, options=full,
        math_options=nvcc.fast_math_options(full),
    )
    meta = outcome.model_dump(mode="json", exclude={"cached", "seconds", "diagnostics"})
    tmp = final / f".meta.{os.getpid()}.{threading.get_ident()}.json"
    tmp.write_text(json.dumps(meta))
    os.chmod(tmp, 0o644)
    os.replace(tmp, meta_path)
    return outcome


def _blame_expressions(log: str, source: str) -> bool:
    """True when NVRTC's errors lie past the source's last line (where name expressions are compiled)."""
    last = source.count("\n") + 1
    lines = [int(m.group(1)) for m in re.finditer(rf"{re.escape(PROGRAM)}\((\d+)\): (?:catastrophic )?error", log)]
    return (bool(lines) and all(n > last for n in lines)) or "name expression" in log.lower()


def _compile_in_child(source: str, options: list[str], headers: dict[str, str], exprs: list[str], ptx: bool, timeout_s: float) -> dict[str, Any]:
    """NVRTC in a child interpreter in a fresh sandbox: the request and result are JSON files in its work directory."""
    request = {"source": source, "options": options, "headers": headers, "exprs": exprs, "ptx": ptx}
    env = {k: v for k, v in os.environ.items() if k in (BINDING_ENV, "KFOUNDRY_NVRTC")}
    env.update({"PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTHONDONTWRITEBYTECODE": "1"})
    run = run_tool([sys.executable, "-c", "from kfoundry.backends.cuda_build import _child_main; _child_main()"],
                   files={_REQUEST: json.dumps(request)}, outputs=[_RESULT, _IMAGE], timeout_s=timeout_s, env=env, label="NVRTC")
    try:
        result = json.loads(run.outputs.get(_RESULT, b"{}"))
    except ValueError:
        result = {}
    if not run.ok or not isinstance(result, dict) or not result:
        tail = (run.stderr or run.stdout).strip()[-2000:]
        return {"ok": False, "log": run.message or f"the NVRTC process exited with {run.returncode}: {tail}"}
    if result.get("ok"):
        if _IMAGE not in run.outputs:
            return {"ok": False, "log": "NVRTC reported success but left no image"}
        result["image"] = run.outputs[_IMAGE]
    return result


def _child_main() -> None:
    """Body of the NVRTC child process: ``request.json`` in, ``result.json`` (and ``image.bin``) out, in the current directory."""
    request = json.loads(Path(_REQUEST).read_text())
    try:
        api = _nvrtc()
        ok, image, log, lowered = api.compile(request["source"], request["options"], request["headers"], request["exprs"], request["ptx"])
    except (CudaError, CudaUnavailable) as exc:
        Path(_RESULT).write_text(json.dumps({"ok": False, "log": str(exc)}))
        return
    if ok:
        Path(_IMAGE).write_bytes(image)
    Path(_RESULT).write_text(json.dumps({"ok": ok, "log": log, "lowered": lowered, "status": "ok" if ok else "compiled-with-error", "binding": api.kind}))


def answer_build(header: dict[str, Any], candidate: str | None = None) -> CudaBuildOutcome:
    """Server-side answer to a worker's ``{"op": "build_cuda", ...}``; never raises for bad input.

    ``header``: ``source`` (CUDA C++), ``options`` (NVRTC options from the allowed set), ``arch``
    (``sm_90`` ...), ``name`` (a label). ``candidate`` is the job's candidate text, used to point
    messages at candidate.py lines.
    """
    source = header.get("source")
    name = re.sub(r"\W", "_", str(header.get("name") or "kernel"))[:64] or "kernel"
    if not isinstance(source, str) or not source.strip():
        msg = "build_cuda needs the CUDA source text as 'source'"
        return CudaBuildOutcome(ok=False, key="", diagnostics=[Diagnostic(file=f"{name}.cu", message=msg)], log=msg)
    options = [str(o) for o in header.get("options") or []][:64]
    arch = str(header.get("arch") or DEFAULT_ARCH)
    line = locate_source(candidate, source) if candidate else None
    label = nvcc.CANDIDATE_FILE if line is not None else PROGRAM
    try:
        return build_cuda(source, options, arch=arch, line=line, file_label=label)
    except FlagError as exc:
        return CudaBuildOutcome(ok=False, key="", arch=arch, diagnostics=[Diagnostic(file=label, line=line, message=str(exc))], log=str(exc))


def build_cuda_request(header: dict[str, Any], candidate: str | None = None) -> dict[str, Any]:
    """``answer_build`` as the JSON the worker is sent (``CudaBuildOutcome.model_dump(mode="json")``)."""
    return answer_build(header, candidate).model_dump(mode="json")
