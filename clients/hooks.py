"""Custom measurement hooks: a user script reads an attempt's results as JSON on stdin and prints a JSON object.

The object is merged into the attempt's ``scores`` (e.g. ``{"e2e_ms": 12.5}``). A ``.py`` script runs
under this interpreter; anything else is executed as given (split like a shell would). A hook
that fails, runs past its time limit or prints something other than a JSON object is recorded
as ``{"<hook>_error": "..."}``, never as a failed attempt.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio

MAX_OUTPUT = 1 << 20


def hook_command(spec: str) -> list[str]:
    parts = shlex.split(spec)
    if not parts:
        raise ValueError("empty --hook")
    if parts[0].endswith(".py"):
        return [sys.executable, *parts]
    return parts


def hook_name(spec: str) -> str:
    return Path(shlex.split(spec)[0]).stem


async def run_hook(spec: str, payload: dict[str, Any], timeout_s: float, cwd: Path | None = None) -> dict[str, Any]:
    """The hook's JSON object, or ``{"<name>_error": reason}``."""
    name = hook_name(spec)
    try:
        with anyio.fail_after(timeout_s):
            done = await anyio.run_process(
                hook_command(spec), input=json.dumps(payload, default=str).encode(), check=False, cwd=cwd,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
    except TimeoutError:
        return {f"{name}_error": f"timed out after {timeout_s:g}s"}
    except OSError as exc:
        return {f"{name}_error": f"could not start: {exc}"}
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        return {f"{name}_error": f"exit {done.returncode}: " + " | ".join(tail)}
    try:
        result = json.loads(done.stdout[:MAX_OUTPUT].decode(errors="replace") or "null")
    except json.JSONDecodeError as exc:
        return {f"{name}_error": f"stdout is not JSON: {exc}"}
    if not isinstance(result, dict):
        return {f"{name}_error": "stdout must be one JSON object"}
    return result
