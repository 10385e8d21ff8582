"""What the HTTP tests share: a real ``kfoundry serve --transport http`` subprocess, token clients, candidates.

The server runs as its own process on 127.0.0.1 with its own KFOUNDRY_HOME and two named tokens
(alice, bob), so every check goes through uvicorn, the SDK's auth and Host/Origin middleware
and the real worker pool, exactly as a laptop attached to the GPU box would meet them.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from anyio.abc import Process
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

from candidates import REFERENCE, _candidate
from mcp_support import sandbox_processes

TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-fedcba9876543210xyz"}
ALLOWED_HOST = "gpu-box.lan"  # the shared server is started with --allowed-host gpu-box.lan:*
ALLOWED_ORIGIN = "https://ide.example.com"  # ... and --allowed-origin https://ide.example.com
START_WITHIN_S = 120.0
STOP_WITHIN_S = 30.0
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw-http-test", "version": "0"}},
}
Progress = Callable[[float, float | None, str | None], Awaitable[None]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(home: Path, tokens: dict[str, str] | None = TOKENS, **extra: str) -> dict[str, str]:
    """A minimal environment for the server: no KFOUNDRY_* leaks in from the test process."""
    env = {"KFOUNDRY_HOME": str(home), "TRITON_INTERPRET": "1", "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(home))}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]  # where the machine's packages live (a GPU box's offline install)
    if tokens:
        env["KFOUNDRY_TOKENS"] = ",".join(f"{name}:{token}" for name, token in tokens.items())
    env.update(extra)
    return env


def serve_command(port: int, *extra: str, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "kfoundry.cli", "serve", "--transport", "http", "--host", host, "--port", str(port), *extra]


@dataclass
class Server:
    proc: Process
    url: str
    home: Path
    log: Path
    tokens: dict[str, str] = field(default_factory=lambda: dict(TOKENS))

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    async def health(self) -> dict[str, Any]:
        async with httpx2.AsyncClient(timeout=5.0) as http:
            response = await http.get(f"{self.url}/healthz")
        assert response.status_code == 200, (response.status_code, response.text)
        return response.json()


async def start_server(home: Path, *extra_args: str, env: dict[str, str] | None = None) -> Server:
    """Start ``kfoundry serve --transport http`` and wait (bounded) until /healthz answers 200."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = home / "server.log"
    with log.open("wb") as sink:
        proc = await anyio.open_process(serve_command(port, *extra_args), env=env or server_env(home), stdout=sink, stderr=subprocess.STDOUT)
    return await healthy(Server(proc, f"http://127.0.0.1:{port}", home, log), stop_server)


async def healthy(server: Server, stop: Callable[[Server], Awaitable[Any]]) -> Server:
    """``server`` once /healthz answers (bounded); stopped with ``stop`` if it exits or never answers."""
    try:
        with anyio.fail_after(START_WITHIN_S):
            async with httpx2.AsyncClient(timeout=2.0) as http:
                while True:
                    assert server.proc.returncode is None, f"server exited with {server.proc.returncode}:\n{server.log_tail()}"
                    try:
                        if (await http.get(f"{server.url}/healthz")).status_code == 200:
                            return server
                    except httpx2.TransportError:
                        pass
                    await anyio.sleep(0.1)
    except BaseException:
        await stop(server)
        raise


async def wait_exit(proc: Process, within: float) -> int:
    with anyio.fail_after(within):
        return await proc.wait()


async def stop_server(server: Server) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; the exit status."""
    if server.proc.returncode is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            return await wait_exit(server.proc, STOP_WITHIN_S)
        except TimeoutError:
            server.proc.kill()
    with anyio.CancelScope(shield=True):
        return await server.proc.wait()


@asynccontextmanager
async def connect(server: Server, who: str = "alice", *, terminate_on_close: bool = True) -> AsyncIterator[Client]:
    """A real MCP client over streamable HTTP, authenticated as ``who``."""
    headers = {"Authorization": f"Bearer {server.tokens[who]}"}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0))
    async with http, Client(streamable_http_client(server.mcp_url, http_client=http, terminate_on_close=terminate_on_close)) as client:
        yield client


#: the harness's probe candidates spin or wait in Python on purpose: measured kernel coverage would rightly reject them
HARNESS_GUARDRAILS = {"rules": {"kernel_coverage": "off"}}


def verify_arguments(candidate: str, **extra: Any) -> dict[str, Any]:
    return {"backend": "cpp", "reference": REFERENCE, "candidate": candidate, "trials": 1, "timeout_s": 120,
            "guardrails": HARNESS_GUARDRAILS, **extra}


async def verify(client: Client, candidate: str, *, within: float = 120.0, progress: Progress | None = None, **extra: Any) -> dict[str, Any]:
    """The structured result of a verify call that must not be a tool error."""
    with anyio.fail_after(within):
        result: CallToolResult = await client.call_tool("verify", verify_arguments(candidate, **extra), progress_callback=progress)
    assert not result.is_error, " ".join(getattr(b, "text", "") for b in result.content)
    assert result.structured_content is not None
    return result.structured_content


# The fault tests' candidates report their pid through a file; file I/O is a guardrail violation
# for real candidates, so these harness probes switch that one rule off explicitly.
PROBE_GUARDRAILS = {"rules": {"file_io": "off", "kernel_coverage": "off"}}


def probe_marker() -> str:
    """A process name (15 characters at most) a probe candidate takes, so the test can find it from the host."""
    return f"kfp{secrets.token_hex(6)}"


def _named(marker: str) -> str:
    # The sandbox hides the host's files from the candidate, but its process name shows in the host's /proc.
    return f"""
        import signal, time
        # Once per process: a verify calls forward more than once (every trial, the default wide
        # family, attribution's sampled calls), and only the first call waits for the gate.
        if not hasattr(self, "opened"):
            self.opened = []
            signal.signal(signal.SIGUSR1, lambda *_: self.opened.append(True))
            with open("/proc/self/comm", "w") as comm:
                comm.write({marker!r})
        opened = self.opened
        """


def writes_pid_then_blocks(marker: str) -> str:
    """A candidate whose forward takes the process name ``marker`` (see ``find_pid``), then never returns.

    Verify it with ``guardrails=PROBE_GUARDRAILS``.
    """
    return _candidate(
        _named(marker)
        + """
        while True:
            time.sleep(0.01)
        """
    )


def waits_for_gate(marker: str) -> str:
    """A correct candidate whose forward takes the process name ``marker`` and waits until ``open_gate`` signals it."""
    return _candidate(
        _named(marker)
        + """
        while not opened:
            time.sleep(0.02)
        return swish(x, self.scale_factor)
        """
    )


def _named_pids(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == marker:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


async def find_pid(marker: str, within: float = 60.0) -> int:
    """The host pid of the probe candidate that took the name ``marker``."""
    with anyio.fail_after(within):
        while not (pids := _named_pids(marker)):
            await anyio.sleep(0.05)
    return pids[0]


async def open_gate(marker: str, waiting: int, within: float = 60.0) -> None:
    """Signal the ``waiting`` candidates blocked in ``waits_for_gate(marker)`` to go on (once all of them wait)."""
    with anyio.fail_after(within):
        while len(pids := _named_pids(marker)) < waiting:
            await anyio.sleep(0.05)
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)


def busy_for(seconds: float) -> str:
    """A correct candidate whose forward spins for ``seconds`` first (slow but finite)."""
    return _candidate(
        f"""
        import time
        end = time.monotonic() + {seconds!r}
        while time.monotonic() < end:
            pass
        return swish(x, self.scale_factor)
        """
    )


def alive(pid: int) -> bool:
    """Running and not already on its way out (zombie, exiting, or SIGKILL pending)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    if stat[0] in ("Z", "X") or int(stat[6]) & 0x4:
        return False
    pending = 0
    for line in status.splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")):
            pending |= int(line.split()[1], 16)
    return not pending & (1 << 8)


def workers(home: Path) -> list[int]:
    """Live worker processes (and anything they forked) started for this server's KFOUNDRY_HOME."""
    return [p.pid for p in sandbox_processes(home)]


# Raw streamable HTTP, as a client that is not ours speaks it (the 2025-11-25 handshake).
PROTOCOL = "2025-11-25"


@dataclass
class Event:
    id: str | None
    data: dict[str, Any] | None


async def events(response: httpx2.Response) -> AsyncIterator[Event]:
    """The SSE events of ``response`` as they arrive (a priming event has no data)."""
    event_id, data = None, ""
    async for line in response.aiter_lines():
        if not line:
            if event_id is not None or data:
                yield Event(event_id, json.loads(data) if data else None)
            event_id, data = None, ""
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()


@dataclass
class Session:
    http: httpx2.AsyncClient
    url: str
    id: str

    def headers(self, **extra: str) -> dict[str, str]:
        return {**MCP_HEADERS, "mcp-session-id": self.id, "mcp-protocol-version": PROTOCOL, **extra}


async def open_session(http: httpx2.AsyncClient, server: Server) -> Session:
    initialize = {
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "raw-wire-test", "version": "0"}},
    }
    with anyio.fail_after(30):
        async with http.stream("POST", server.mcp_url, json=initialize, headers=MCP_HEADERS) as response:
            assert response.status_code == 200, await response.aread()
            session_id = response.headers["mcp-session-id"]
            async for event in events(response):
                if event.data is not None and event.data.get("id") == 0:
                    break
        session = Session(http, server.mcp_url, session_id)
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post(server.mcp_url, json=initialized, headers=session.headers())).status_code == 202
    return session


def token_client(server: Server) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(headers={"Authorization": f"Bearer {server.tokens['alice']}"}, timeout=httpx2.Timeout(30.0, read=120.0))


def call(request_id: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": {"progressToken": f"p{request_id}"}}}


async def rpc(session: Session, message: dict[str, Any], *, within: float = 60.0) -> tuple[int, dict[str, Any]]:
    """POST one JSON-RPC request; the HTTP status and the JSON-RPC message answering it (from JSON or SSE)."""
    with anyio.fail_after(within):
        async with session.http.stream("POST", session.url, json=message, headers=session.headers()) as response:
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                return response.status_code, json.loads(await response.aread())
            async for event in events(response):
                if event.data is not None and "id" in event.data and event.data["id"] == message.get("id"):
                    return response.status_code, event.data
    raise AssertionError(f"no answer to {message.get('method')}")
