"""`kfoundry optimize --server` across a server restart: the call the restart cut short runs again on the new server."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "http"))

from http_support import (  # noqa: E402
    PROBE_GUARDRAILS,
    REFERENCE,
    TOKENS,
    Server,
    alive,
    busy_for,
    find_pid,
    free_port,
    healthy,
    open_gate,
    probe_marker,
    serve_command,
    server_env,
    stop_server,
    waits_for_gate,
)

from kfoundry.clients.session import connect  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def serve_on(home: Path, port: int) -> Server:
    """``kfoundry serve --transport http`` on ``port`` (the same address after a restart)."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"server-{port}.log"
    with log.open("ab") as sink:
        proc = await anyio.open_process(serve_command(port), env=server_env(home), stdout=sink, stderr=subprocess.STDOUT)
    return await healthy(Server(proc, f"http://127.0.0.1:{port}", home, log), stop_server)


@pytest.mark.timeout(900)
async def test_a_call_cut_short_by_a_server_crash_runs_again_once_the_server_is_back(tmp_path: Path) -> None:
    home, port, marker = tmp_path / "home", free_port(), probe_marker()
    servers = [await serve_on(home, port)]
    try:
        # Hang guards, not speed bounds: a verify on a loaded 2-core box can take minutes.
        with anyio.fail_after(700):
            async with connect(f"{servers[0].url}/mcp", TOKENS["alice"], timeout_s=300, restart_wait_s=120) as session:
                assert (await session.verify("cpp", REFERENCE, busy_for(0.0), trials=1)).state.value == "correct"
                verdicts: list[str] = []
                async with anyio.create_task_group() as group:

                    async def cut_short() -> None:
                        verified = await session.verify("cpp", REFERENCE, waits_for_gate(marker), trials=1, guardrails=PROBE_GUARDRAILS)
                        verdicts.append(verified.state.value)

                    group.start_soon(cut_short)
                    doomed = await find_pid(marker)
                    servers[0].proc.send_signal(signal.SIGKILL)
                    await servers[0].proc.wait()
                    while alive(doomed):  # the crashed server's workers go with it
                        await anyio.sleep(0.1)
                    servers.append(await serve_on(home, port))
                    await open_gate(marker, waiting=1)
                after = await session.verify("cpp", REFERENCE, busy_for(0.0), trials=1)
    finally:
        for server in servers:
            await stop_server(server)

    assert verdicts == ["correct"]
    assert after.state.value == "correct"
    assert session.link is not None and session.link.reconnects == 1
