"""ptxas facts: the ``ptxas -v`` parser (nvcc's and NVRTC's logs use the same format), ``cuobjdump -res-usage``
for extensions built by ``load_inline`` on a GPU host (run inside the worker that built them), and ``c++filt``
demangling of kernel names (sandboxed when the trusted side asks).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kfoundry.schema import KernelStats
from kfoundry.toolrun import run_tool

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


def demangle(names: list[str], *, sandboxed: bool = False) -> dict[str, str]:
    """Mangled C++ names -> readable ones (cu++filt or c++filt); names it cannot read stay as they are.

    ``sandboxed``: run the demangler in a fresh sandbox (``kfoundry.toolrun``), for the trusted side,
    where the names come out of a candidate's build. A worker, already sandboxed, runs it directly.
    """
    mangled = [n for n in names if n.startswith("_Z")]
    result = {n: n for n in names}
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if not mangled or tool is None:
        return result
    if sandboxed:
        run = run_tool([tool, *mangled], files={}, timeout_s=30, label=Path(tool).name)
        text = run.stdout if run.ok else ""
    else:
        try:
            text = subprocess.run([tool, *mangled], capture_output=True, text=True, timeout=30, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            text = ""
    lines = text.splitlines()
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
