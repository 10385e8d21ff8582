"""g++ builds of plain-C-ABI shared libraries, cached by content hash.

Runs in the trusted server (workers ask for builds over their channel), so the cache
only ever holds what this module compiled: a candidate cannot plant a library under
another candidate's hash.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from kfoundry.backends.base import TrustedBuild
from kfoundry.config import settings
from kfoundry.schema import Diagnostic

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
    user: int | None = None,
    group: int | None = None,
    line_offset: int = 0,
    file_label: str | None = None,
) -> BuildOutcome:
    """Compile ``source`` into a shared library (or return the cached one).

    ``user``/``group`` run the compiler unprivileged when the server runs as root, so a
    hostile ``#include "/etc/shadow"`` fails like any other missing permission.
    """
    flags = DEFAULT_FLAGS + tuple(check_flags(list(extra_flags or [])))
    key = cache_key(source, flags)
    root = settings().cache_dir / "cpp"
    final = root / key / "lib.so"
    if final.exists():
        return BuildOutcome(ok=True, library=str(final), key=key, cached=True)
    if len(source.encode()) > MAX_SOURCE_BYTES:
        msg = f"C++ source is {len(source.encode())} bytes; the limit is {MAX_SOURCE_BYTES}"
        return BuildOutcome(ok=False, key=key, diagnostics=[Diagnostic(file=file_label or "kernel.cpp", message=msg)], log=msg)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"build-{key}-", dir=root))
    try:
        src = work / "kernel.cpp"
        src.write_text(source)
        out = work / "lib.so"
        cmd = ["g++", *flags, "-o", str(out), str(src)]
        if user is not None:
            os.chown(work, user, group if group is not None else -1)
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                cwd=work,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C"},
                user=user,
                group=group,
                check=False,
            )
        except subprocess.TimeoutExpired:
            msg = f"g++ did not finish within {timeout_s:.0f} s"
            return BuildOutcome(ok=False, key=key, diagnostics=[Diagnostic(file=file_label or "kernel.cpp", message=msg)], log=msg)
        seconds = time.perf_counter() - start
        log = (proc.stdout + proc.stderr)[-20000:]
        diags = parse_diagnostics(log, "kernel.cpp", line_offset, file_label)
        if proc.returncode != 0 or not out.exists():
            if not any(d.severity == "error" for d in diags):
                diags.append(Diagnostic(file=file_label or "kernel.cpp", message=log.strip()[-2000:] or f"g++ exited with {proc.returncode}"))
            return BuildOutcome(ok=False, key=key, seconds=seconds, diagnostics=diags, log=log, command=" ".join(cmd))
        final.parent.mkdir(parents=True, exist_ok=True)
        staged = final.parent / f".lib.{os.getpid()}.so"
        shutil.copyfile(out, staged)
        os.chmod(staged, 0o755)
        os.replace(staged, final)
        return BuildOutcome(ok=True, library=str(final), key=key, seconds=seconds, diagnostics=diags, log=log, command=" ".join(cmd))
    finally:
        shutil.rmtree(work, ignore_errors=True)
