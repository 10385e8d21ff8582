"""A real `kfoundry serve` subprocess over stdio, driven through every tool on a bundled problem."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from kfoundry import examples

pytestmark = pytest.mark.anyio

REFERENCE = examples.source("elementwise")
SOLUTION = examples.source("elementwise", "cpp")


def server_params(home: Path) -> StdioServerParameters:
    env = {
        "KFOUNDRY_HOME": str(home),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1"),
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(home)),
    }
    return StdioServerParameters(command=sys.executable, args=["-m", "kfoundry.cli", "serve"], env=env)


async def ok(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    with anyio.fail_after(240):
        result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def worker_pids(home: Path) -> list[int]:
    marker = f"KFOUNDRY_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"kfoundry.runner.entry" in (entry / "cmdline").read_bytes():
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


async def test_a_stdio_server_subprocess_answers_every_tool_on_a_bundled_problem(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with anyio.fail_after(900):
        async with Client(server_params(home)) as session:
            assert session.server_info.name == "kernel-foundry"

            backends = await ok(session, "backends", {})
            assert backends["best"] == "cpp"

            translated = await ok(session, "translate_reference", {"reference": REFERENCE, "target_backend": "cpp"})
            assert REFERENCE.strip() in translated["prompt"]
            assert translated["analysis"]["output_shapes"] == [[256, 512]]

            compiled = await ok(session, "compile", {"backend": "cpp", "candidate": SOLUTION})
            assert compiled["state"] == "compiled", compiled

            verified = await ok(session, "verify", {"backend": "cpp", "reference": REFERENCE, "candidate": SOLUTION})
            assert verified["state"] == "correct", verified
            assert verified["trials_passed"] == verified["trials"] == 5

            arguments = {"backend": "cpp", "reference": REFERENCE, "candidate": SOLUTION, "baselines": ["eager"], "reps": 5}
            profiled = await ok(session, "profile", arguments)
            assert profiled["state"] == "correct", profiled
            assert profiled["candidate"]["n"] == profiled["eager"]["n"] == 5
            assert profiled["speedup_vs_eager"] > 0

            analysis = await ok(session, "analyze_profile", {"profile": profiled["run_id"]})
            assert analysis["profile_run_id"] == profiled["run_id"]
            assert analysis["recommendation"].strip()
            assert (home / "runs" / profiled["run_id"] / "result.json").is_file()

    assert worker_pids(home) == [], "the server's workers outlived its stdio session"
