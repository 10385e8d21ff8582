"""g++ builds of plain-C-ABI shared libraries, cached by content hash.

Asked for by the trusted server (workers ask for builds over their channel), so the cache
only ever holds what this module compiled: a candidate cannot plant a library under
another candidate's hash. g++ itself runs in a fresh sandbox (``kfoundry.toolrun``); only
the library it leaves is copied into the cache.
"""

from __future__ import annotations

import hashlib
import os
import re
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
MAX_SOURCE_BYTES = 1 << 20
_DIAG = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?:(?P<col>\d+):)?\s*(?P<sev>error|warning|note|fatal error):\s*(?P<msg>.*)$")
_FLAG_OK = re.compile(r"^-(O[0-3s]|march=[\w-]+|mtune=[\w-]+|f[\w-]+|std=[\w+]+|D\w+(=[\w.]*)?|W[\w-]*|ffast-math|l(m|pthread|gomp))$")


class BuildOutcome(TrustedBuild):
    """A g++ build of a plain-C-ABI shared library."""

    artefact_fields: ClassVar[tuple[str, ...]] = ("library",)

    library: str = Field(default="", description="Path of the shared library when ok.")
    command: str = ""


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
    flags = DEFAULT_FLAGS + tuple(check_flags(list(extra_flags or [])))
    key = cache_key(source, flags)
    final = settings().cache_dir / "cpp" / key / "lib.so"
    label = file_label or "kernel.cpp"
    if final.exists():
        return BuildOutcome(ok=True, library=str(final), key=key, cached=True)
    if len(source.encode()) > MAX_SOURCE_BYTES:
        msg = f"C++ source is {len(source.encode())} bytes; the limit is {MAX_SOURCE_BYTES}"
        return BuildOutcome(ok=False, key=key, diagnostics=[Diagnostic(file=label, message=msg)], log=msg)
    cmd = ["g++", *flags, "-o", "lib.so", "kernel.cpp"]
    run = run_tool(cmd, files={"kernel.cpp": source}, outputs=["lib.so"], timeout_s=timeout_s)
    log = (run.log + (f"\n{run.message}" if run.message else ""))[-20000:]
    diags = parse_diagnostics(log, "kernel.cpp", line_offset, file_label)
    library = run.outputs.get("lib.so")
    if not run.ok or library is None:
        if run.message:
            diags.append(Diagnostic(file=label, message=run.message))
        elif not any(d.severity == "error" for d in diags):
            diags.append(Diagnostic(file=label, message=log.strip()[-2000:] or f"g++ exited with {run.returncode}"))
        return BuildOutcome(ok=False, key=key, seconds=run.seconds, diagnostics=diags, log=log, command=" ".join(cmd))
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = final.parent / f".lib.{os.getpid()}.{threading.get_ident()}.so"
    staged.write_bytes(library)
    os.chmod(staged, 0o755)
    os.replace(staged, final)
    return BuildOutcome(ok=True, library=str(final), key=key, seconds=run.seconds, diagnostics=diags, log=log, command=" ".join(cmd))
