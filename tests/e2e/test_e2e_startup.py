"""A stdio server answers ``initialize`` and ``tools/list`` before loading torch: workers own the heavy imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client
from test_e2e_stdio import server_params

pytestmark = pytest.mark.anyio


def _server_pid(home: Path) -> int | None:
    marker = f"KFOUNDRY_HOME={home}".encode()
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit():
                continue
            cmdline = (entry / "cmdline").read_bytes()
            if b"kfoundry.cli" in cmdline and b"serve" in cmdline and marker in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
        except OSError:
            continue
    return None


def test_importing_the_server_and_its_tools_loads_neither_torch_nor_triton() -> None:
    code = ("import sys, kfoundry.cli, kfoundry.server.app; kfoundry.server.app.build_server(); "
            "print(sorted(m for m in ('torch', 'triton', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


async def test_a_stdio_server_lists_its_tools_with_no_torch_library_mapped(tmp_path: Path) -> None:
    # A generous bound: the point is what is loaded, not how fast a noisy CI box is (benchmarks/startup.py times it).
    with anyio.fail_after(60):
        async with Client(server_params(tmp_path)) as client:
            tools = await client.list_tools()
            assert {t.name for t in tools.tools} >= {"compile", "verify", "profile", "analyze_profile", "translate_reference"}
            pid = _server_pid(tmp_path)
            assert pid is not None
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "libtorch" not in maps and "libc10" not in maps
