"""What the MCP-level tests share: one served in-memory client per module, bounded calls, process scans."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from candidates import CORRECT_CPP, REFERENCE
from mcp import Client
from mcp.types import CallToolResult

from kfoundry.config import settings
from kfoundry.server.app import build_server

Progress = Callable[[float, float | None, str | None], Awaitable[None]]
WORKER_MODULE = b"kfoundry.runner.entry"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(anyio_backend: str) -> AsyncIterator[Client]:
    """A client connected in memory to build_server(): its lifespan runs a real WorkerPool with spares."""
    async with Client(build_server()) as connected:
        yield connected


async def call(client: Client, tool: str, arguments: dict[str, Any], *, within: float = 120.0, progress: Progress | None = None) -> CallToolResult:
    with anyio.fail_after(within):
        return await client.call_tool(tool, arguments, progress_callback=progress)


async def ok(client: Client, tool: str, arguments: dict[str, Any], *, within: float = 120.0) -> dict[str, Any]:
    """The structured result of a call that must not be a tool error."""
    result = await call(client, tool, arguments, within=within)
    assert not result.is_error, error_text(result)
    assert result.structured_content is not None
    return result.structured_content


async def read(client: Client, uri: str, *, within: float = 30.0) -> str:
    """The text of a resource."""
    with anyio.fail_after(within):
        resource = await client.read_resource(uri)
    return resource.contents[0].text


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def rss_growth() -> Iterator[list[float]]:
    """This process's resident-set growth in MB while the block runs (sampled every 20 ms); read ``[0]`` after it."""
    baseline = _rss_mb()
    grown = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            grown[0] = max(grown[0], _rss_mb() - baseline)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield grown
    finally:
        done.set()
        sampler.join(timeout=5)
        grown[0] = max(grown[0], _rss_mb() - baseline)


def error_text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def verify(client: Client, candidate: str, *, within: float = 120.0, **extra: Any) -> dict[str, Any]:
    """verify against the elementwise reference with the cpp backend."""
    arguments = {"backend": "cpp", "reference": REFERENCE, "candidate": candidate, "trials": 2, "timeout_s": 120, **extra}
    return await ok(client, "verify", arguments, within=within)


async def assert_still_serving(client: Client) -> None:
    """The same client gets a correct verdict for a correct candidate."""
    data = await verify(client, CORRECT_CPP, trials=1)
    assert data["state"] == "correct", data


PF_EXITING = 0x4
SIGKILL_BIT = 1 << (9 - 1)


@dataclass(frozen=True)
class SandboxProcess:
    pid: int
    ppid: int
    sid: int
    state: str


def _killed(entry: Path, flags: int) -> bool:
    """Already exiting, or SIGKILL is pending: the process is going away and cannot run candidate code."""
    if flags & PF_EXITING:
        return True
    pending = 0
    for line in (entry / "status").read_text().splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")):
            pending |= int(line.split()[1], 16)
    return bool(pending & SIGKILL_BIT)


def sandbox_processes(home: Path | None = None) -> list[SandboxProcess]:
    """Worker processes (and anything they forked) of one KFOUNDRY_HOME that are alive and not being killed."""
    marker = f"KFOUNDRY_HOME={home or settings().home}".encode()
    found: list[SandboxProcess] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            # bubblewrap's own processes name the worker module in their arguments; they are the sandbox, not in it
            if WORKER_MODULE not in cmdline or Path(cmdline.split(b"\0")[0].decode(errors="replace")).name == "bwrap":
                continue
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] in ("Z", "X") or _killed(entry, int(fields[6])):
                continue
        except OSError:
            continue
        found.append(SandboxProcess(pid=int(entry.name), ppid=int(fields[1]), sid=int(fields[3]), state=fields[0]))
    return found


def _started_by_server(process: SandboxProcess) -> bool:
    """The worker's interpreter itself: started by this server, directly or through bubblewrap (its two processes)."""
    if process.ppid == os.getpid():
        return process.sid == process.pid
    parent = process.ppid
    for _ in range(2):
        try:
            if Path((Path("/proc") / str(parent) / "cmdline").read_bytes().split(b"\0")[0].decode()).name != "bwrap":
                return False
            parent = int((Path("/proc") / str(parent) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if parent == os.getpid():
            return True
    return False


def assert_only_spares_remain() -> None:
    """Every remaining sandbox process is a worker the server started itself, and no more than its spares."""
    remaining = sandbox_processes()
    strays = [p for p in remaining if not _started_by_server(p)]
    assert strays == [], f"processes left behind by a killed worker: {strays}"
    assert len(remaining) <= settings().spares, remaining
