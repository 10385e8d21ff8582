"""Kernel sources a candidate hands to a build call, read with ``ast`` and compiled one by one in the sandbox.

The HIP, SYCL and Metal backends check candidates the same way when their device is absent:
find the string each build call receives (``load_inline(cpp_sources=..., cuda_sources=...,
sycl_sources=...)``, ``torch.mps.compile_shader(src)``) without importing the candidate, compile
each with the backend's own command in a fresh sandbox (``kfoundry.toolrun.run_tool``), and
locate the compiler's ``file:line:col`` messages at the ``candidate.py`` lines the text came from.
What differs per backend is a ``UnitSpec`` (which call and argument, what the build prepends)
and the command; this module holds the rest.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kfoundry.backends import embedded
from kfoundry.backends.base import SourceHit
from kfoundry.backends.cuda_sources import CANDIDATE_FILE, CudaUnit, Segment, _argument, _call_name, _Resolver
from kfoundry.backends.nvcc import parse_nvcc_diagnostics
from kfoundry.schema import Diagnostic
from kfoundry.toolrun import ToolResult, ToolStatus, run_tool


@dataclass
class UnitRun:
    """One unit's compile: the run (None when it could not start), its diagnostics located in candidate.py."""

    unit: CudaUnit
    run: ToolResult | None
    diagnostics: list[Diagnostic]
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.run is not None and self.run.ok


@dataclass(frozen=True)
class UnitSpec:
    """One kind of source a candidate builds: the call, where the source sits in it, what the build prepends."""

    call: str
    #: positional index of the source argument (-1: keyword only) and its keyword
    index: int
    keyword: str
    #: lines the build puts before the candidate's text (load_inline prepends torch's header)
    prefix: str = ""
    #: only sources matching this are compiled (a cpp_sources holding only prototypes has nothing for the device)
    needs: str = ""


def extract(candidate: str, specs: Sequence[UnitSpec]) -> tuple[list[CudaUnit], list[Diagnostic]]:
    """The units ``candidate`` builds under ``specs``, in source order; warnings for sources only known at run time."""
    try:
        tree = ast.parse(candidate, filename=CANDIDATE_FILE)
    except SyntaxError as exc:
        return [], [Diagnostic(file=CANDIDATE_FILE, line=exc.lineno, column=exc.offset, message=f"Python syntax error: {exc.msg}")]
    resolver = _Resolver(candidate, tree)
    units: list[CudaUnit] = []
    notes: list[Diagnostic] = []
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset))
    for call in calls:
        for spec in (s for s in specs if s.call == _call_name(call)):
            node = _argument(call, spec.index, spec.keyword)
            if node is None or (isinstance(node, ast.Constant) and node.value is None):
                continue
            segments = resolver.segments(node, call.lineno)
            if segments is None:
                notes.append(
                    Diagnostic(
                        file=CANDIDATE_FILE, line=call.lineno, severity="warning",
                        message=f"the {spec.keyword} passed to {spec.call}(...) is built at run time (not a string literal or a "
                        "module-level string variable), so compile-only could not check it",
                    )
                )
                continue
            text = "".join(s.text for s in segments)
            if spec.needs and not re.search(spec.needs, text):
                continue
            name_node = _argument(call, 0, "name") if spec.call == "load_inline" else None
            base = name_node.value if isinstance(name_node, ast.Constant) and isinstance(name_node.value, str) else spec.call
            name = re.sub(r"\W", "_", f"{base}_{spec.keyword}")[:64]
            if spec.prefix:
                segments = [Segment(spec.prefix, None), *segments]
            units.append(CudaUnit(kind=spec.call, name=name, segments=segments, flags=[], call_line=call.lineno))
    return units, notes


#: (unit, the name its text is written under, the output file) -> the command, or why it cannot be built here
Command = Callable[[CudaUnit, str, str], "list[str] | str"]


def _cached_run(cache: Path | None, key: str, run: Callable[[], ToolResult]) -> tuple[ToolResult, bool]:
    """A finished run (ok, or failed with the compiler's own messages) is kept by ``key``; caps and timeouts are not."""
    record = cache / f"{key}.json" if cache is not None else None
    if record is not None and record.is_file():
        try:
            saved = json.loads(record.read_text())
            return ToolResult(ToolStatus(saved["status"]), saved["returncode"], saved["stdout"], saved["stderr"], 0.0), True
        except (OSError, ValueError, KeyError):
            pass  # a torn or older record is not an answer: the unit is built again and the record rewritten
    result = run()
    if record is not None and result.status in (ToolStatus.ok, ToolStatus.failed) and result.returncode is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        staged = record.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        staged.write_text(json.dumps({"status": result.status.value, "returncode": result.returncode,
                                      "stdout": result.stdout[-60000:], "stderr": result.stderr[-60000:]}))
        os.replace(staged, record)
    return result, False


def compile_units(
    units: Sequence[CudaUnit], *, suffix: str, command: Command, output: str, env: dict[str, str], label: str, timeout_s: float,
    cache: Path | None = None, toolchain: str = "",
) -> list[UnitRun]:
    """Compile each unit in its own sandbox.

    With ``cache``, a unit whose command, text and ``toolchain`` (a version string) were compiled before is
    answered from there, with ``cached`` set and ``seconds`` 0.
    """
    done: list[UnitRun] = []
    for unit in units:
        compiled = f"{unit.name}{suffix}"
        cmd = command(unit, compiled, output)
        if isinstance(cmd, str):
            done.append(UnitRun(unit, None, [Diagnostic(file=CANDIDATE_FILE, line=unit.call_line, message=cmd)]))
            continue
        key = hashlib.sha256("\0".join([toolchain, json.dumps(env, sort_keys=True), *cmd, unit.text]).encode()).hexdigest()[:24]
        run, cached = _cached_run(cache, key, lambda cmd=cmd, compiled=compiled, unit=unit: run_tool(
            cmd, files={compiled: unit.text}, outputs=[output], timeout_s=timeout_s, env=env, label=label))
        diags = parse_nvcc_diagnostics(run.log, unit, compiled)
        if run.status is not ToolStatus.ok and run.status is not ToolStatus.failed:
            diags.append(Diagnostic(file=CANDIDATE_FILE, line=unit.call_line, message=run.message))
        elif not run.ok and not any(d.severity == "error" for d in diags):
            diags.append(Diagnostic(file=CANDIDATE_FILE, line=unit.call_line, message=run.message or run.log.strip()[-2000:] or f"{label} failed"))
        done.append(UnitRun(unit, run, diags, cached))
    return done


def missing_header(diags: Sequence[Diagnostic]) -> str | None:
    """A header the host lacks, named by an error outside candidate.py (a toolchain or torch header including it)."""
    for d in diags:
        m = re.search(r"'([\w/.+-]+)' file not found", d.message)
        if m and d.severity == "error" and d.file != CANDIDATE_FILE:
            return m.group(1)
    return None


#: (pattern, precision kind, what the match is) over kernel source text
Patterns = Sequence[tuple["re.Pattern[str]", str, str]]
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def string_hits(tree: ast.Module, patterns: Patterns) -> list[SourceHit]:
    """Reduced-precision spellings in the candidate's string literals (C comments blanked, docstrings skipped)."""
    hits: list[SourceHit] = []
    for node in embedded._strings(tree):
        text = _COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), node.value)
        # the string's newlines are the file's when the literal spans exactly that many lines
        exact = node.end_lineno is not None and node.end_lineno - node.lineno == text.count("\n")
        for pattern, kind, what in patterns:
            for m in pattern.finditer(text):
                line = node.lineno + text.count("\n", 0, m.start()) if exact else node.lineno
                hits.append(SourceHit(line, f"kernel source uses {m.group()} ({what})", kind))
    return hits
