"""Who may talk to the box: bearer tokens, Host/Origin checks, /healthz, the non-loopback guard, the body limit."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2
import pytest
from candidates import CORRECT_CPP
from http_support import (
    ALLOWED_HOST,
    ALLOWED_ORIGIN,
    INITIALIZE,
    MCP_HEADERS,
    TOKENS,
    Server,
    connect,
    free_port,
    serve_command,
    server_env,
    verify,
)
from mcp import MCPError

pytestmark = pytest.mark.anyio


async def post(server: Server, body: bytes | dict, **headers: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30.0) as http:
        if isinstance(body, dict):
            return await http.post(server.mcp_url, json=body, headers={**MCP_HEADERS, **headers})
        return await http.post(server.mcp_url, content=body, headers={**MCP_HEADERS, **headers})


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("Bearer not-a-token-anyone-was-given", id="unknown-token"),
        pytest.param(f"Bearer {TOKENS['alice'][:-1]}X", id="one-character-off"),
        pytest.param(f"Basic {TOKENS['alice']}", id="wrong-scheme"),
    ],
)
async def test_a_request_without_a_valid_token_is_answered_401_before_any_mcp_parsing(server: Server, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await post(server, INITIALIZE, **headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "mcp-session-id" not in response.headers


async def test_a_raw_initialize_with_a_good_token_is_answered_200(server: Server) -> None:
    response = await post(server, INITIALIZE, Authorization=f"Bearer {TOKENS['bob']}")
    assert response.status_code == 200, response.text
    assert '"serverInfo"' in response.text and "kernel-foundry" in response.text


@pytest.mark.parametrize("who", ["alice", "bob"])
async def test_an_mcp_client_with_either_named_token_gets_tool_results(server: Server, who: str) -> None:
    async with connect(server, who) as client:
        with anyio.fail_after(60):
            tools = {t.name for t in (await client.list_tools()).tools}
            backends = await client.call_tool("backends", {})
    assert {"compile", "verify", "profile", "analyze_profile", "translate_reference", "backends"} <= tools
    assert not backends.is_error and backends.structured_content is not None
    assert any(b["name"] == "cpp" and b["available"] for b in backends.structured_content["backends"])


@pytest.mark.parametrize("host", ["gpu-box.attacker.example", f"{ALLOWED_HOST}.attacker.example:8765", "192.0.2.7:8765"])
async def test_a_foreign_host_header_is_answered_421_even_with_a_good_token(server: Server, host: str) -> None:
    response = await post(server, INITIALIZE, Authorization=f"Bearer {TOKENS['alice']}", Host=host)
    assert response.status_code == 421, response.text


@pytest.mark.parametrize("origin", ["https://evil.example", f"http://{ALLOWED_HOST}:8765", "null"])
async def test_a_foreign_origin_is_answered_403_even_with_a_good_token(server: Server, origin: str) -> None:
    response = await post(server, INITIALIZE, Authorization=f"Bearer {TOKENS['alice']}", Origin=origin)
    assert response.status_code == 403, response.text


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Origin": "http://localhost:3000"}, id="loopback-origin"),
        pytest.param({"Host": f"{ALLOWED_HOST}:8765"}, id="allowed-host-flag"),
        pytest.param({"Host": f"{ALLOWED_HOST}:443", "Origin": ALLOWED_ORIGIN}, id="allowed-origin-flag"),
    ],
)
async def test_loopback_names_and_the_hosts_and_origins_allowed_on_the_command_line_are_accepted(server: Server, headers: dict[str, str]) -> None:
    response = await post(server, INITIALIZE, Authorization=f"Bearer {TOKENS['alice']}", **headers)
    assert response.status_code == 200, response.text


async def test_healthz_answers_without_a_token_and_reports_each_device_and_its_queue(server: Server) -> None:
    async with httpx2.AsyncClient(timeout=10.0) as http:
        response = await http.get(f"{server.url}/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["version"]
    cpu = body["devices"]["cpu"]
    assert set(cpu) >= {"running", "queued", "timing", "spares"}
    assert cpu["queued"] == 0 and cpu["timing"] is False


async def test_serving_on_a_non_loopback_address_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    command = serve_command(free_port(), host="0.0.0.0")
    with anyio.fail_after(60):
        done = await anyio.run_process(command, env=server_env(tmp_path, tokens=None), check=False)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode != 0, stderr
    assert "KFOUNDRY_TOKEN" in stderr and "0.0.0.0" in stderr, stderr


async def test_a_request_body_over_the_limit_is_answered_413_naming_the_limit(server: Server) -> None:
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "pad": "' + b"x" * (3 << 19) + b'"}'
    response = await post(server, body, Authorization=f"Bearer {TOKENS['alice']}")
    assert response.status_code == 413
    assert "1 MiB" in response.text and "--max-body-mb" in response.text, response.text


async def test_an_oversize_tool_call_fails_with_an_error_naming_the_limit_and_the_session_keeps_working(server: Server) -> None:
    oversize = CORRECT_CPP + "\n# " + "x" * (3 << 19) + "\n"
    async with connect(server) as client:
        with anyio.fail_after(60), pytest.raises(MCPError) as raised:
            await client.call_tool("verify", {"backend": "cpp", "reference": "x", "candidate": oversize})
        assert "1 MiB" in str(raised.value), str(raised.value)
        data = await verify(client, CORRECT_CPP)
    assert data["state"] == "correct", data
