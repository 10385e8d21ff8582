"""A server told to stop drains: the call in flight is answered, new calls are refused saying why,
and an ordinary MCP client gets its result and closes its session without an error."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from http_support import busy_for, connect, start_server, stop_server, verify_arguments, wait_exit, workers
from mcp.types import CallToolResult

from kfoundry.server.app import DRAINING

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def health(url: str) -> tuple[int, str]:
    async with httpx2.AsyncClient(timeout=5.0) as http:
        response = await http.get(f"{url}/healthz")
    return response.status_code, response.json()["status"]


async def test_a_client_gets_its_answer_and_closes_cleanly_when_the_server_drains_on_sigterm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = await start_server(home)
    outcome: dict[str, Any] = {}
    started = anyio.Event()

    async def progress(fraction: float, total: float | None, message: str | None) -> None:
        if (message or "").startswith("trial"):
            started.set()

    try:
        with anyio.fail_after(180):
            # An ordinary client: no tools/list up front, and a DELETE for its session when it leaves.
            async with connect(server, "alice") as client, anyio.create_task_group() as group:

                async def slow_call() -> None:
                    outcome["answer"] = await client.call_tool("verify", verify_arguments(busy_for(4.0), timeout_s=60), progress_callback=progress)

                group.start_soon(slow_call)
                await started.wait()
                server.proc.send_signal(signal.SIGTERM)
                while await health(server.url) != (503, "draining"):
                    await anyio.sleep(0.05)
                outcome["refused"] = await client.call_tool("verify", verify_arguments(busy_for(0.0)))
            code = await wait_exit(server.proc, 60)
    finally:
        await stop_server(server)

    answer: CallToolResult = outcome["answer"]
    assert not answer.is_error and (answer.structured_content or {}).get("state") == "correct", answer
    refused: CallToolResult = outcome["refused"]
    assert refused.is_error and DRAINING in refused.content[0].text, refused
    assert code == 0, (code, server.log_tail())
    with anyio.fail_after(10):
        while workers(home):
            await anyio.sleep(0.1)
