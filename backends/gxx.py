"""g++ builds of plain-C-ABI shared libraries, cached by content hash.

Asked for by the trusted server (workers ask for builds over their channel), so the cache
only ever holds what this module compiled: a candidate cannot plant a library under
another candidate's hash. g++ itself runs in a fresh sandbox (``kfoundry.toolrun``); only
the library it leaves is copied into the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import threading
from functools import cache
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from kfoundry.backends.base import TrustedBuild
from kfoundry.config import settings
from kfoundry.schema import Diagnostic
from kfoundry.toolrun import run_tool

DEFAULT_FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17", "-fPIC", "-shared")
#: what the compiler records about the options it used: the command line in the library's
#: .GCC.command.line section, and every function's optimize attributes (from ``#pragma GCC
#: optimize``, ``_Pragma`` built by macros, or ``__attribute__((optimize))``) in the
#: optimized-tree dump, after GCC itself joined the strings and expanded the macros
RECORD_FLAGS = ("-frecord-gcc-switches", "-fdump-tree-optimized=kernel.optimized")
_DUMP = "kernel.optimized"
#: options that let GCC trade IEEE results for speed (fast-math and its parts); -fno-math-errno
#: and -fno-trapping-math only drop errno and trap guarantees, never a result, so they are not listed
FAST_MATH_OPTIONS = frozenset({
    "Ofast", "ffast-math", "funsafe-math-optimizations", "fassociative-math", "freciprocal-math", "ffinite-math-only",
    "fno-signed-zeros", "fcx-limited-range", "fcx-fortran-rules", "fno-honor-nans", "fno-honor-infinities",
})
_FUNCTION = re.compile(r"^;; Function (?P<name>\S+)", re.M)
_OPTIMIZE = re.compile(r"__attribute__\(\(optimize \((?P<args>[^)]*)\)\)\)")
MAX_SOURCE_BYTES = 1 << 20
_DIAG = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?:(?P<col>\d+):)?\s*(?P<sev>error|warning|note|fatal error):\s*(?P<msg>.*)$")
_FLAG_OK = re.compile(r"^-(O[0-3s]|march=[\w-]+|mtune=[\w-]+|f[\w-]+|std=[\w+]+|D\w+(=[\w.]*)?|W[\w-]*|ffast-math|l(m|pthread|gomp))$")


class BuildOutcome(TrustedBuild):
    """A g++ build of a plain-C-ABI shared library."""

    artefact_fields: ClassVar[tuple[str, ...]] = ("library",)

    library: str = Field(default="", description="Path of the shared library when ok.")
    command: str = ""
    math_options: list[str] = Field(
        default_factory=list,
        description="Fast-math options the compiler recorded using ('command line: -ffast-math', 'function f: Ofast'); "
        "read from the build, not from the source's text.",
    )


class FlagError(ValueError):
    pass


@cache
def compiler_version() -> str:
    try:
        out = subprocess.run(["g++", "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.splitlines()[0] if out.stdout else ""


def check_flags(flags: list[str]) -> list[str]:
    """Allow optimisation/define/warning flags only: paths, plugins and linker scripts stay out."""
    for flag in flags:
        if not _FLAG_OK.match(flag):
            raise FlagError(f"compiler flag {flag!r} is not allowed; use -O*, -march=, -f*, -std=, -D, -W* or -lm")
    return flags


def cache_key(source: str, flags: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for part in (compiler_version(), " ".join(flags), source):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def parse_diagnostics(log: str, source_name: str, line_offset: int = 0, file_label: str | None = None) -> list[Diagnostic]:
    """Turn g++ output into diagnostics, relabelled to where the source lives for the caller."""
    found: list[Diagnostic] = []
    for raw in log.splitlines():
        m = _DIAG.match(raw.strip())
        if not m:
            continue
        sev = m["sev"].replace("fatal error", "error")
        own = Path(m["file"]).name == source_name
        found.append(
            Diagnostic(
                file=(file_label or source_name) if own else m["file"],
                line=int(m["line"]) + (line_offset if own else 0),
                column=int(m["col"]) if m["col"] else None,
                severity=sev,  # type: ignore[arg-type]
                message=m["msg"].strip(),
            )
        )
    return found


def _section(elf: bytes, wanted: str) -> bytes:
    """The bytes of section ``wanted`` of a little-endian ELF64 file (empty when absent or unreadable)."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return b""
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    entsize, count, names = struct.unpack_from("<HHH", elf, 0x3A)
    headers = []
    for i in range(count):
        at = shoff + i * entsize
        if at + 64 > len(elf):
            return b""
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", elf, at)
        headers.append((name, offset, size))
    if names >= len(headers):
        return b""
    table = elf[headers[names][1]:headers[names][1] + headers[names][2]]
    for name, offset, size in headers:
        end = table.find(b"\0", name)
        if table[name:end].decode(errors="replace") == wanted:
            return elf[offset:offset + size]
    return b""


def _option(text: str) -> str:
    """An option as GCC spells it on the command line, without the dash.

    GCC's rule for optimize attributes and pragmas: an argument with a dash is an option as
    given, one starting with 'O' a level, anything else the suffix of an -f option
    ('fast-math' -> 'ffast-math').
    """
    text = text.strip().strip('"')
    if text.startswith("-"):
        return text[1:]
    return text if text.startswith("O") else f"f{text}"


def recorded_math_options(library: bytes, dump: str) -> list[str]:
    """The fast-math options the compiler used, from its own records of ``library``'s build.

    The command line comes from ``-frecord-gcc-switches``' section; per-function options
    from the optimize attributes GCC printed in its optimized-tree dump, so a
    ``#pragma GCC optimize("O" "fast")`` built by a macro shows as the ``Ofast`` GCC applied.
    """
    found: list[str] = []
    for option in _section(library, ".GCC.command.line").decode(errors="replace").replace("\0", " ").split():
        if option.startswith("-") and _option(option) in FAST_MATH_OPTIONS:
            found.append(f"command line: {option}")
    headers = list(_FUNCTION.finditer(dump))
    for i, header in enumerate(headers):
        # GCC prints a function's attributes right under its ";; Function" header, before the body.
        body = dump[header.end(): headers[i + 1].start() if i + 1 < len(headers) else len(dump)]
        for attribute in _OPTIMIZE.finditer(body[:4000]):
            for arg in re.findall(r'"([^"]*)"', attribute["args"]):
                if _option(arg) in FAST_MATH_OPTIONS:
                    found.append(f"function {header['name']}: {arg}")
    return list(dict.fromkeys(found))


def _warning(options: list[str], label: str) -> list[Diagnostic]:
    if not options:
        return []
    message = (f"built with fast-math options ({'; '.join(options[:8])}), as the compiler recorded them: allowed, but under the strict "
               "policy the verdict checks the error against the float64 oracle and the IEEE results (NaN/inf, -0.0, subnormals) "
               "the reference defines")
    return [Diagnostic(file=label, severity="warning", message=message)]


def build(
    source: str,
    extra_flags: list[str] | None = None,
    *,
    timeout_s: float = 60.0,
    line_offset: int = 0,
    file_label: str | None = None,
) -> BuildOutcome:
    """Compile ``source`` into a shared library (or return the cached one).

    g++ runs in a fresh sandbox (``kfoundry.toolrun``) under the build caps, so it sees only its
    own work directory and the system: ``#include "/etc/shadow"`` or a server file is "No such
    file", ``#include "/dev/zero"`` ends at the address-space cap, and a compile that never ends
    is killed with all its processes at ``timeout_s``.
    Raises:
        FlagError: a flag is outside the allowed set.
        SandboxUnavailable: no usable bubblewrap and no ``KFOUNDRY_UNSAFE_NO_SANDBOX=1``.
    """
    flags = DEFAULT_FLAGS + tuple(check_flags(list(extra_flags or []))) + RECORD_FLAGS
    key = cache_key(source, flags)
    final = settings().cache_dir / "cpp" / key / "lib.so"
    record = final.with_name("math_options.json")
    label = file_label or "kernel.cpp"
    if final.exists() and record.exists():
        try:
            options = [str(o) for o in json.loads(record.read_text())]
        except (OSError, ValueError):
            options = recorded_math_options(final.read_bytes(), "")
        return BuildOutcome(ok=True, library=str(final), key=key, cached=True, math_options=options, diagnostics=_warning(options, label))
    if len(source.encode()) > MAX_SOURCE_BYTES:
        msg = f"C++ source is {len(source.encode())} bytes; the limit is {MAX_SOURCE_BYTES}"
        return BuildOutcome(ok=False, key=key, diagnostics=[Diagnostic(file=label, message=msg)], log=msg)
    cmd = ["g++", *flags, "-o", "lib.so", "kernel.cpp"]
    run = run_tool(cmd, files={"kernel.cpp": source}, outputs=["lib.so", _DUMP], timeout_s=timeout_s)
    log = (run.log + (f"\n{run.message}" if run.message else ""))[-20000:]
    diags = parse_diagnostics(log, "kernel.cpp", line_offset, file_label)
    library = run.outputs.get("lib.so")
    if not run.ok or library is None:
        if run.message:
            diags.append(Diagnostic(file=label, message=run.message))
        elif not any(d.severity == "error" for d in diags):
            diags.append(Diagnostic(file=label, message=log.strip()[-2000:] or f"g++ exited with {run.returncode}"))
        return BuildOutcome(ok=False, key=key, seconds=run.seconds, diagnostics=diags, log=log, command=" ".join(cmd))
    dump = run.outputs.get(_DUMP, b"")
    options = recorded_math_options(library, dump.decode(errors="replace"))
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = final.parent / f".lib.{os.getpid()}.{threading.get_ident()}.so"
    staged.write_bytes(library)
    os.chmod(staged, 0o755)
    staged_record = record.with_name(f".math_options.{os.getpid()}.{threading.get_ident()}.json")
    staged_record.write_text(json.dumps(options))
    os.replace(staged_record, record)  # before the library: a library in the cache always has its record
    os.replace(staged, final)
    return BuildOutcome(ok=True, library=str(final), key=key, seconds=run.seconds, diagnostics=diags + _warning(options, label), log=log,
                        command=" ".join(cmd), math_options=options)
