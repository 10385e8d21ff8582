"""CUDA sources read out of a candidate without running it, nvcc compile-only builds, and ptxas facts.

On a host without a GPU the ``cuda`` backend can still check a candidate: ``compile_only``
finds the CUDA source strings the candidate passes to ``load_cuda(...)`` or
``torch.utils.cpp_extension.load_inline(cuda_sources=...)`` with ``ast`` (the candidate is
never imported), compiles each with ``nvcc -cubin -arch=sm_90 -Xptxas -v`` and reports
per-kernel registers, spills and shared memory, with compiler messages located at
``candidate.py`` lines. Runs in the trusted server; ``user``/``group`` drop privileges for
nvcc as ``gxx.build`` does for g++.

Also here: the ptxas ``-v`` parser (NVRTC logs use the same format), ``c++filt`` demangling,
kernel-signature parsing shared with ``load_cuda``, and ``cuobjdump -res-usage`` for
extensions built by ``load_inline`` on a GPU host.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from kfoundry.config import settings
from kfoundry.schema import Diagnostic, KernelStats

CANDIDATE_FILE = "candidate.py"
DEFAULT_ARCH = "sm_90"
#: What load_inline prepends to the joined cuda_sources (torch.utils.cpp_extension.load_inline).
LOAD_INLINE_PREFIX = ("#include <torch/types.h>", "#include <cuda.h>", "#include <cuda_runtime.h>")
#: torch.utils.cpp_extension.COMMON_NVCC_FLAGS
TORCH_NVCC_FLAGS = (
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
)
#: Flags a candidate may ask for (NVRTC options for load_cuda, extra_cuda_cflags for load_inline):
#: code-generation choices only, never paths, plugins or output locations.
_FLAG_OK = re.compile(
    r"^(-O[0-3]|-D\w+(=[\w.+-]*)?|-U\w+|--?use_fast_math|--?(ftz|prec-div|prec-sqrt|fmad)=(true|false)"
    r"|--?std=c\+\+(11|14|17|20)|-lineinfo|--generate-line-info|--?maxrregcount=\d+|--?extra-device-vectorization"
    r"|--?expt-relaxed-constexpr|--?expt-extended-lambda|--extended-lambda|-dopt=(on|off)|-w|--disable-warnings"
    r"|-diag-suppress=[\d,]+|--diag-suppress=[\d,]+|-Xptxas=-O[0-3]|--ptxas-options=-v|-Xptxas=-v"
    r"|--?(arch|gpu-architecture)=(sm|compute)_\d{2,3}[af]?)$"
)
_NVCC_DIAG = re.compile(
    r"^(?P<file>[^\s(][^(]*?)\((?P<line>\d+)\):\s*(?P<sev>catastrophic error|error|warning|remark|note)(?:\s*#[\w-]+)?:\s*(?P<msg>.*)$"
)
_GCC_DIAG = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?:(?P<col>\d+):)?\s*(?P<sev>fatal error|error|warning|note):\s*(?P<msg>.*)$")
_TOOL_ERROR = re.compile(r"^(?P<tool>ptxas|nvcc|nvlink|fatbinary)\s+(?P<sev>fatal|error|warning)\s*:\s*(?P<msg>.*)$")


class FlagError(ValueError):
    """A compiler option outside the allowed set."""


_ALLOWED_HINT = (
    "use -O*, -D*, --use_fast_math, --fmad=, --ftz=, --prec-div=, --prec-sqrt=, -std=c++17/20, -lineinfo, "
    "-maxrregcount= or -arch=sm_XX (no paths)"
)


def check_flags(flags: list[str]) -> list[str]:
    for flag in flags:
        if not _FLAG_OK.match(flag):
            raise FlagError(f"CUDA compiler option {flag!r} is not allowed; {_ALLOWED_HINT}")
    return flags


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


# -- ptxas -v and cuobjdump ---------------------------------------------------------------------

_ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>\w+)'")
_PROPS = re.compile(r"Function properties for (?P<name>\S+)")
_FRAME = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads")
_USED = re.compile(r"Used (?P<regs>\d+) registers")
_SMEM = re.compile(r"(?P<smem>\d+) bytes smem")


@dataclass
class PtxasKernel:
    mangled: str
    arch: str = ""
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack_bytes: int | None = None
    shared_bytes: int = 0


def parse_ptxas(log: str) -> list[PtxasKernel]:
    """Entry functions and their resources from ``ptxas -v`` output (nvcc's or NVRTC's log)."""
    entries: dict[str, PtxasKernel] = {}
    frames: dict[str, re.Match[str]] = {}
    current: PtxasKernel | None = None
    props_for: str | None = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = entries.setdefault(m["name"], PtxasKernel(mangled=m["name"]))
            current.arch = m["arch"]
            props_for = None
        elif m := _PROPS.search(line):
            props_for = m["name"]
        elif m := _FRAME.search(line):
            if props_for is not None:
                frames[props_for] = m
            props_for = None
        elif (m := _USED.search(line)) and current is not None:
            current.registers = int(m["regs"])
            if s := _SMEM.search(line):
                current.shared_bytes = int(s["smem"])
    for name, kernel in entries.items():
        if (f := frames.get(name)) is not None:
            kernel.stack_bytes, kernel.spill_stores, kernel.spill_loads = int(f["stack"]), int(f["stores"]), int(f["loads"])
    return list(entries.values())


_RES_FUNCTION = re.compile(r"^\s*Function (?P<name>[^\s:]+)\s*:\s*$")
_RES_VALUES = re.compile(r"REG:(?P<reg>\d+).*?SHARED:(?P<shared>\d+).*?LOCAL:(?P<local>\d+)")


def resource_usage(binary: str) -> list[KernelStats]:
    """Per-kernel registers/shared/local memory of a built extension (``cuobjdump -res-usage``); [] without cuobjdump."""
    exe = shutil.which("cuobjdump")
    if exe is None or not Path(binary).is_file():
        return []
    try:
        out = subprocess.run([exe, "-res-usage", binary], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    found: dict[str, KernelStats] = {}
    name: str | None = None
    for line in out.stdout.splitlines():
        if m := _RES_FUNCTION.match(line):
            name = m["name"]
        elif name is not None and (m := _RES_VALUES.search(line)):
            found[name] = KernelStats(
                name=name, registers=int(m["reg"]), spills_bytes=int(m["local"]), shared_memory_bytes=int(m["shared"]),
                notes=[f"cuobjdump -res-usage: {m['local']} bytes local memory per thread (spills and local arrays)"],
            )
            name = None
    names = demangle(list(found))
    stats = []
    for mangled, ks in found.items():
        full = names.get(mangled, mangled)
        ks.name = short_name(full)
        if full != ks.name:
            ks.notes.append(full)
        stats.append(ks)
    return stats


def demangle(names: list[str]) -> dict[str, str]:
    """Mangled C++ names -> readable ones (cu++filt or c++filt); names it cannot read stay as they are."""
    mangled = [n for n in names if n.startswith("_Z")]
    result = {n: n for n in names}
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if not mangled or tool is None:
        return result
    try:
        out = subprocess.run([tool], input="\n".join(mangled) + "\n", capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return result
    lines = out.stdout.splitlines()
    if len(lines) == len(mangled):
        result.update({m: d.strip() or m for m, d in zip(mangled, lines, strict=True)})
    return result


def short_name(full: str) -> str:
    """``void ns::k<4>(float*)`` -> ``ns::k<4>``: the function name without return type or parameters."""
    text = full.replace("(anonymous namespace)", "{anonymous}")
    depth = 0
    for i, ch in enumerate(text):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            text = text[:i]
            break
    depth = 0
    cut = 0
    for i, ch in enumerate(text):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == " " and depth == 0:
            cut = i + 1
    return text[cut:].strip() or full


# -- kernel signatures (shared with load_cuda) ---------------------------------------------------

_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_STRINGS = re.compile(r'"(?:\\.|[^"\\\n])*"')
_KERNEL = re.compile(
    r"__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(?:static\s+|inline\s+|__forceinline__\s+|__noinline__\s+)*void\s+"
    r"(?:__launch_bounds__\s*\([^)]*\)\s*)?(?P<name>[A-Za-z_]\w*)\s*\((?P<args>[^)]*)\)\s*(?P<end>[{;])"
)
_TYPE_WORDS = {"int", "long", "short", "char", "unsigned", "signed", "float", "double", "bool", "void"}
_CANONICAL = {
    "signed": "int", "signed int": "int", "unsigned": "unsigned int", "long int": "long", "signed long": "long",
    "long long int": "long long", "signed long long": "long long", "unsigned long int": "unsigned long",
    "unsigned long long int": "unsigned long long", "short int": "short", "signed short": "short",
    "unsigned short int": "unsigned short", "half": "__half", "half2": "__half2", "nv_bfloat16": "__nv_bfloat16",
    "nv_bfloat162": "__nv_bfloat162",
}


@dataclass(frozen=True)
class Param:
    """One kernel parameter: its base type and pointer depth (``const float* x`` -> ("float", 1))."""

    base: str
    pointer: int
    reference: bool = False


@dataclass
class KernelDecl:
    name: str
    params: list[Param] | None  # None: the parameter list could not be read
    extern_c: bool
    template: bool
    qualified: str  # name with enclosing namespaces, for NVRTC name expressions
    line: int  # 1-based line in the source


def strip_comments(source: str) -> str:
    """Comments become spaces, keeping every newline so positions and line numbers stay valid."""
    return _COMMENTS.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), source)


def parse_param(text: str) -> Param:
    text = text.split("=")[0]
    text = re.sub(r"__align__\s*\(\s*\d+\s*\)", " ", text)
    text = re.sub(r"\b(const|volatile|__restrict__|__restrict|restrict|__grid_constant__|struct|register)\b", " ", text)
    text = re.sub(r"\b(std|cuda::std)::", "", text)
    array = bool(re.search(r"\[\s*\d*\s*\]\s*$", text))
    text = re.sub(r"\[\s*\d*\s*\]\s*$", "", text)
    pointer = text.count("*") + int(array)
    reference = "&" in text
    words = text.replace("*", " ").replace("&", " ").split()
    if len(words) >= 2 and words[-1] not in _TYPE_WORDS:
        words = words[:-1]  # the parameter's name
    base = " ".join(words)
    return Param(_CANONICAL.get(base, base), pointer, reference)


def _split_args(args: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(args):
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(args[start:i])
            start = i + 1
    parts.append(args[start:])
    return [p for p in (p.strip() for p in parts) if p]


def _scopes(text: str, end: int) -> tuple[bool, list[str] | None]:
    """(inside an extern "C" block, enclosing namespace names) at ``end``; names None inside a class/function."""
    stack: list[tuple[str, str]] = []
    for m in re.finditer(r"[{}]", text[:end]):
        if m.group() == "}":
            if stack:
                stack.pop()
            continue
        before = text[max(0, m.start() - 200) : m.start()]
        if re.search(r'extern\s*"C"\s*$', before):
            stack.append(("extern", ""))
        elif ns := re.search(r"namespace\s*([A-Za-z_]\w*)?\s*$", before):
            stack.append(("namespace", ns.group(1) or ""))
        else:
            stack.append(("other", ""))
    if any(kind == "other" for kind, _ in stack):
        return False, None
    return any(kind == "extern" for kind, _ in stack), [n for kind, n in stack if kind == "namespace" and n]


def find_kernels(source: str) -> list[KernelDecl]:
    """Every ``__global__`` function defined in ``source`` (declarations without a body are skipped)."""
    text = _STRINGS.sub(lambda m: m.group() if m.group() == '"C"' else '"' + " " * (len(m.group()) - 2) + '"', strip_comments(source))
    found: dict[str, KernelDecl] = {}
    for m in _KERNEL.finditer(text):
        if m["end"] != "{":
            continue
        head = text[max(0, m.start() - 300) : m.start()]
        template = bool(re.search(r"template\s*<[^;{}]*>\s*$", head))
        extern_here = bool(re.search(r'extern\s*"C"\s*$', head))
        in_extern, namespaces = _scopes(text, m.start())
        if namespaces is None:
            continue
        args = m["args"].strip()
        params: list[Param] | None = [parse_param(a) for a in _split_args(args)] if args and args != "void" else []
        qualified = "::".join([*namespaces, m["name"]])
        line = text.count("\n", 0, m.start()) + 1
        decl = KernelDecl(m["name"], params, extern_here or in_extern, template, qualified, line)
        if m["name"] in found and found[m["name"]].params != params:
            found[m["name"]].params = None  # overloaded: the name alone does not say which one
            continue
        found[m["name"]] = decl
    return list(found.values())


# -- reading CUDA sources out of a candidate (never importing it) --------------------------------


@dataclass
class Segment:
    """A piece of a compiled file; ``line`` is the candidate.py line of its first line when known."""

    text: str
    line: int | None
    flat: bool = False  # a one-line literal with escaped newlines: every line maps to ``line``


@dataclass
class CudaUnit:
    """One CUDA translation unit the candidate builds: a load_cuda source or load_inline's cuda_sources."""

    kind: str  # "load_cuda" | "load_inline"
    name: str
    segments: list[Segment]
    flags: list[str]
    call_line: int
    ignored_flags: list[str] = field(default_factory=list)
    has_cpp_sources: bool = False

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    def locate(self, line: int) -> tuple[str, int]:
        """(file, line) for a line of the compiled file: candidate.py where the text came from a literal."""
        at = 1
        for seg in self.segments:
            if not seg.text:
                continue
            lines = seg.text.count("\n")
            if at <= line <= at + lines and not (line == at + lines and seg.text.endswith("\n")):
                if seg.line is not None:
                    return CANDIDATE_FILE, seg.line if seg.flat else seg.line + (line - at)
                break
            at += lines
        return f"{self.name}.cu", line


def _literal_line(source: str, node: ast.Constant) -> int | None:
    """Line of the string's first line when its lines map 1:1 onto the file (no escaped newlines)."""
    segment = ast.get_source_segment(source, node)
    if segment is None or not isinstance(node.value, str):
        return None
    return node.lineno if segment.count("\n") == node.value.count("\n") else None


class _Resolver:
    def __init__(self, source: str, tree: ast.Module) -> None:
        self.source = source
        self.assigned: dict[str, list[ast.Assign | ast.AnnAssign]] = {}
        self.augmented: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.assigned.setdefault(target.id, []).append(node)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                self.assigned.setdefault(node.target.id, []).append(node)
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                self.augmented.add(node.target.id)

    def segments(self, node: ast.expr | None, before: int, depth: int = 0) -> list[Segment] | None:
        """Static text of ``node`` as segments, or None when it is only known at run time."""
        if node is None or depth > 20:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            line = _literal_line(self.source, node)
            if line is None and node.lineno == node.end_lineno:
                return [Segment(node.value, node.lineno, flat=True)]
            return [Segment(node.value, line)]
        if isinstance(node, ast.Name):
            if node.id in self.augmented:
                return None
            candidates = [a for a in self.assigned.get(node.id, []) if a.lineno <= before] or self.assigned.get(node.id, [])
            if len(candidates) != 1:
                return None  # unbound or reassigned: which text runs is a run-time question
            value = candidates[0].value
            return self.segments(value, candidates[0].lineno, depth + 1)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left = self.segments(node.left, before, depth + 1)
            right = self.segments(node.right, before, depth + 1)
            return left + right if left is not None and right is not None else None
        if isinstance(node, (ast.List, ast.Tuple)):
            parts: list[Segment] = []
            for i, element in enumerate(node.elts):
                segs = self.segments(element, before, depth + 1)
                if segs is None:
                    return None
                parts += ([Segment("\n", None)] if i else []) + segs
            return parts
        if (
            isinstance(node, ast.Call)
            and _call_name(node) == "dedent"
            and len(node.args) == 1
            and (inner := self.segments(node.args[0], before, depth + 1)) is not None
            and len(inner) == 1
        ):
            return [Segment(textwrap.dedent(inner[0].text), inner[0].line)]
        return None

    def strings(self, node: ast.expr | None, before: int) -> list[str] | None:
        if node is None:
            return []
        if isinstance(node, ast.Name):
            found = [a for a in self.assigned.get(node.id, []) if a.lineno <= before]
            return self.strings(found[-1].value, found[-1].lineno) if len(found) == 1 else None
        if isinstance(node, (ast.List, ast.Tuple)):
            values = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            return values if len(values) == len(node.elts) else None
        return None


def _call_name(node: ast.Call) -> str:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return ""


def _argument(node: ast.Call, index: int, keyword: str) -> ast.expr | None:
    for kw in node.keywords:
        if kw.arg == keyword:
            return kw.value
    if 0 <= index < len(node.args) and not any(isinstance(a, ast.Starred) for a in node.args[: index + 1]):
        return node.args[index]
    return None


def extract_units(candidate: str) -> tuple[list[CudaUnit], list[Diagnostic]]:
    """The CUDA translation units a candidate builds, read with ``ast``; diagnostics for what cannot be read."""
    try:
        tree = ast.parse(candidate, filename=CANDIDATE_FILE)
    except SyntaxError as exc:
        return [], [Diagnostic(file=CANDIDATE_FILE, line=exc.lineno, column=exc.offset, message=f"Python syntax error: {exc.msg}")]
    resolver = _Resolver(candidate, tree)
    units: list[CudaUnit] = []
    notes: list[Diagnostic] = []
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call) and _call_name(n) in ("load_cuda", "load_inline")), key=lambda n: n.lineno)
    for call in calls:
        kind = _call_name(call)
        if kind == "load_cuda":
            source_node, name_node, flags_node = _argument(call, 0, "source"), _argument(call, 1, "name"), _argument(call, 2, "options")
        else:
            source_node, name_node, flags_node = _argument(call, 2, "cuda_sources"), _argument(call, 0, "name"), _argument(call, -1, "extra_cuda_cflags")
            if source_node is None or (isinstance(source_node, ast.Constant) and source_node.value is None):
                continue  # a C++-only extension: nothing for nvcc
        segments = resolver.segments(source_node, call.lineno)
        if segments is None:
            notes.append(
                Diagnostic(
                    file=CANDIDATE_FILE, line=call.lineno, severity="warning",
                    message=f"the CUDA source passed to {kind}(...) is built at run time (not a string literal or a module-level "
                    "string variable), so compile-only could not check it; it is compiled when the candidate runs on a GPU",
                )
            )
            continue
        name = name_node.value if isinstance(name_node, ast.Constant) and isinstance(name_node.value, str) else f"{kind}_{len(units)}"
        name = re.sub(r"\W", "_", name)[:64] or "kernel"
        flags = resolver.strings(flags_node, call.lineno) or []
        allowed = [f for f in flags if _FLAG_OK.match(f)]
        if kind == "load_inline":
            segments = [Segment("\n".join(LOAD_INLINE_PREFIX) + "\n", None), *segments]
        units.append(
            CudaUnit(
                kind=kind, name=name, segments=segments, flags=allowed, call_line=call.lineno,
                ignored_flags=[f for f in flags if f not in allowed],
                has_cpp_sources=kind == "load_inline" and _argument(call, 1, "cpp_sources") is not None,
            )
        )
    return units, notes


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


def _unit_command(unit: CudaUnit, arch: str, src: Path, out: Path) -> list[str] | str:
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
    return [*cmd, "-o", str(out), str(src)]


def _cache_key(unit: CudaUnit, arch: str) -> str:
    h = hashlib.sha256()
    includes, std, torch_version = _torch_build_facts() if unit.kind == "load_inline" else ([], "", "")
    for part in ("nvcc-compile-only-1", nvcc_version(), arch, unit.kind, unit.name, " ".join(unit.flags), torch_version, std, *includes, unit.text):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def compile_unit(
    unit: CudaUnit, arch: str = DEFAULT_ARCH, *, timeout_s: float = 300.0, user: int | None = None, group: int | None = None
) -> UnitResult:
    """nvcc -cubin one unit (or reuse the cached result of the same text and toolchain)."""
    compiled_name = f"{unit.name}.cu"
    key = _cache_key(unit, arch)
    root = settings().cache_dir / "cuda" / "nvcc"
    record = root / f"{key}.json"
    if record.is_file():
        try:
            saved = json.loads(record.read_text())
            return _unit_result(unit, compiled_name, saved["returncode"], saved["log"], float(saved["seconds"]), cached=True)
        except (OSError, ValueError, KeyError):
            pass
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"nvcc-{key}-", dir=root))
    try:
        src, out = work / compiled_name, work / "kernel.cubin"
        src.write_text(unit.text)
        cmd = _unit_command(unit, arch, src, out)
        if isinstance(cmd, str):
            return UnitResult(False, [], [Diagnostic(file=CANDIDATE_FILE, line=unit.call_line, message=f"compile-only cannot check this load_inline source here: {cmd}")])
        if user is not None:
            os.chown(work, user, group if group is not None else -1)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "HOME": str(work), "TMPDIR": str(work)}
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout_s, env=env, user=user, group=group, check=False)
        except subprocess.TimeoutExpired:
            msg = f"nvcc did not finish within {timeout_s:.0f} s"
            return UnitResult(False, [], [Diagnostic(file=CANDIDATE_FILE, line=unit.call_line, message=msg)], timeout_s)
        seconds = time.perf_counter() - start
        log = (proc.stdout + proc.stderr)[-60000:]
        returncode = proc.returncode if out.exists() or proc.returncode != 0 else 1
        staged = record.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        staged.write_text(json.dumps({"returncode": returncode, "log": log, "seconds": seconds}))
        os.replace(staged, record)
        return _unit_result(unit, compiled_name, returncode, log, seconds, cached=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unit_result(unit: CudaUnit, compiled_name: str, returncode: int, log: str, seconds: float, *, cached: bool) -> UnitResult:
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
    names = demangle([k.mangled for k in parse_ptxas(log)])
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
    candidate: str, arch: str = DEFAULT_ARCH, *, timeout_s: float = 300.0, user: int | None = None, group: int | None = None
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
        results = list(pool.map(lambda u: compile_unit(u, arch, timeout_s=timeout_s, user=user, group=group), units))
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
