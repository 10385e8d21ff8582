"""Faults over the wire: a worker killed mid-job, a client that goes away, a server told to stop with work in flight."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from candidates import CORRECT_CPP
from http_support import (
    PROBE_GUARDRAILS,
    Server,
    alive,
    busy_for,
    connect,
    find_pid,
    probe_marker,
    start_server,
    stop_server,
    verify,
    verify_arguments,
    wait_exit,
    workers,
    writes_pid_then_blocks,
)
from mcp.types import CallToolResult

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FREED_WITHIN_S = 20.0
SPARES = 2  # KFOUNDRY_SPARES default: the only workers an idle server keeps


async def test_a_worker_killed_mid_job_reports_runtime_error_and_the_next_job_runs(server: Server) -> None:
    marker = probe_marker()
    outcome: dict[str, Any] = {}
    async with connect(server, "bob") as client:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:

                async def doomed() -> None:
                    outcome["data"] = await verify(client, writes_pid_then_blocks(marker), within=110, guardrails=PROBE_GUARDRAILS)

                group.start_soon(doomed)
                os.kill(await find_pid(marker), signal.SIGKILL)
        data = outcome["data"]
        assert data["state"] == "runtime_error", data
        assert data["error"]["type"] == "ProcessDied" and "SIGKILL" in data["error"]["message"], data["error"]
        after = await verify(client, CORRECT_CPP)
    assert after["state"] == "correct", after


async def test_a_client_that_disconnects_mid_job_gets_its_job_cancelled_and_its_worker_freed(server: Server) -> None:
    marker = probe_marker()
    async with connect(server, "alice") as client, anyio.create_task_group() as group:
        group.start_soon(client.call_tool, "verify", verify_arguments(writes_pid_then_blocks(marker), timeout_s=120, guardrails=PROBE_GUARDRAILS))
        pid = await find_pid(marker)
        assert alive(pid)
        group.cancel_scope.cancel()  # the call is abandoned, then the client leaves
    with anyio.fail_after(FREED_WITHIN_S):
        while alive(pid):
            await anyio.sleep(0.1)
        while True:
            cpu = (await server.health())["devices"]["cpu"]
            if cpu["running"] == 0 and len(workers(server.home)) <= SPARES:
                break
            await anyio.sleep(0.1)
    async with connect(server, "alice") as client:
        data = await verify(client, CORRECT_CPP)
    assert data["state"] == "correct", data


async def test_a_dropped_connection_without_session_termination_still_frees_the_worker(server: Server) -> None:
    """The client vanishes without its DELETE (crashed laptop, killed agent): the open request stream closing is enough."""
    marker = probe_marker()
    async with connect(server, "bob", terminate_on_close=False) as client, anyio.create_task_group() as group:
        group.start_soon(client.call_tool, "verify", verify_arguments(writes_pid_then_blocks(marker), timeout_s=120, guardrails=PROBE_GUARDRAILS))
        pid = await find_pid(marker)
        group.cancel_scope.cancel()
    with anyio.fail_after(FREED_WITHIN_S):
        while alive(pid):
            await anyio.sleep(0.1)
        while (await server.health())["devices"]["cpu"]["running"]:
            await anyio.sleep(0.1)


async def test_sigterm_with_a_job_in_flight_answers_the_call_exits_and_leaves_no_worker(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = await start_server(home)
    outcome: dict[str, Any] = {}
    trial_started = anyio.Event()

    async def progress(fraction: float, total: float | None, message: str | None) -> None:
        if (message or "").startswith("trial"):
            trial_started.set()

    try:
        # terminate_on_close=False: the server is gone when the client leaves, so no DELETE can be sent
        async with connect(server, "alice", terminate_on_close=False) as client:
            # Listed up front, as every real client does: the SDK validates a tool's structured result against
            # the listed output schema and would otherwise fetch tools/list after the result, from a stopped server.
            with anyio.fail_after(30):
                await client.list_tools()
            async with anyio.create_task_group() as group:

                async def slow_call() -> None:
                    try:
                        outcome["result"] = await client.call_tool("verify", verify_arguments(busy_for(3.0), timeout_s=60), progress_callback=progress)
                    except Exception as exc:  # noqa: BLE001 - an error is an acceptable answer; a hang is not
                        outcome["error"] = exc

                with anyio.fail_after(120):
                    group.start_soon(slow_call)
                    await trial_started.wait()
                    assert workers(home), "the job's workers should be running"
                    server.proc.send_signal(signal.SIGTERM)
                    code = await wait_exit(server.proc, 60)
                    while not outcome:
                        await anyio.sleep(0.05)
    finally:
        await stop_server(server)

    assert code in (0, -signal.SIGTERM), (code, server.log_tail())
    assert set(outcome) == {"result"} or set(outcome) == {"error"}, outcome
    if "result" in outcome:
        result: CallToolResult = outcome["result"]
        assert result.is_error or (result.structured_content or {}).get("state") == "correct", result
    with anyio.fail_after(10):
        while workers(home):
            await anyio.sleep(0.1)
