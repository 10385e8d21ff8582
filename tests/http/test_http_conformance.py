"""Conformance checks that apply to a tools-and-resources server, spoken as raw JSON-RPC over streamable HTTP.

They follow the MCP conformance suite's server scenarios that need no test tools of the
suite's own (lifecycle, ping, errors, tools, resources, prompts, sessions); the suite itself
needs the network to install, so these run in its place.
"""

from __future__ import annotations

import json
from itertools import count
from typing import Any

import anyio
import httpx2
import jsonschema
import pytest
from http_support import MCP_HEADERS, PROTOCOL, Server, open_session, rpc, token_client

pytestmark = pytest.mark.anyio

_ids = count(100)


def request(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": next(_ids), "method": method, **({"params": params} if params is not None else {})}


@pytest.mark.parametrize("version", ["2025-03-26", "2025-06-18", PROTOCOL])
async def test_initialize_agrees_on_the_clients_version_and_declares_tools_and_resources(server: Server, version: str) -> None:
    message = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "conformance", "version": "0"}},
    }
    async with token_client(server) as http:
        with anyio.fail_after(30):
            response = await http.post(server.mcp_url, json=message, headers=MCP_HEADERS)
    answer = next(json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:") and line[5:].strip())

    result = answer["result"]
    assert result["protocolVersion"] == version
    assert result["serverInfo"]["name"] == "kernel-foundry" and result["serverInfo"]["version"]
    assert {"tools", "resources"} <= set(result["capabilities"])
    assert "kfoundry://schemas/{tool}" in result["instructions"]


async def test_ping_answers_an_empty_result(server: Server) -> None:
    async with token_client(server) as http:
        session = await open_session(http, server)
        _, answer = await rpc(session, request("ping"))

    assert answer["result"] == {}


async def test_an_unknown_method_is_method_not_found(server: Server) -> None:
    async with token_client(server) as http:
        session = await open_session(http, server)
        _, answer = await rpc(session, request("tools/frobnicate", {}))

    assert answer["error"]["code"] == -32601


async def test_a_body_that_is_not_json_is_a_parse_error(server: Server) -> None:
    async with token_client(server) as http:
        session = await open_session(http, server)
        with anyio.fail_after(30):
            response = await http.post(session.url, content=b"{not json", headers=session.headers())

    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32700


async def test_every_listed_tool_has_a_valid_schema_and_a_result_that_matches_its_output_schema(server: Server) -> None:
    async with token_client(server) as http:
        session = await open_session(http, server)
        _, listed = await rpc(session, request("tools/list"))
        _, called = await rpc(session, request("tools/call", {"name": "backends", "arguments": {}}))

    tools = {tool["name"]: tool for tool in listed["result"]["tools"]}
    assert set(tools) == {"compile", "verify", "profile", "analyze_profile", "translate_reference", "backends"}
    for tool in tools.values():
        assert tool["title"] and tool["description"] and tool["annotations"], tool["name"]
        assert tool["inputSchema"]["type"] == "object", tool["name"]
        jsonschema.Draft202012Validator.check_schema(tool["inputSchema"])
        jsonschema.Draft202012Validator.check_schema(tool["outputSchema"])
    result = called["result"]
    assert result.get("isError") is not True and result["content"][0]["type"] == "text"
    jsonschema.validate(result["structuredContent"], tools["backends"]["outputSchema"])


async def test_calling_an_unknown_tool_or_with_bad_arguments_is_a_tool_error_the_model_can_read(server: Server) -> None:
    async with token_client(server) as http:
        session = await open_session(http, server)
        _, unknown = await rpc(session, request("tools/call", {"name": "frobnicate", "arguments": {}}))
        _, bad = await rpc(session, request("tools/call", {"name": "verify", "arguments": {"backend": "cpp"}}))

    assert unknown["result"]["isError"] is True and "frobnicate" in unknown["result"]["content"][0]["text"]
    assert bad["result"]["isError"] is True and "reference" in bad["result"]["content"][0]["text"]


async def test_resources_and_templates_list_and_read_and_a_missing_one_is_invalid_params(server: Server) -> None:
    async with token_client(server) as http:
        session = await open_session(http, server)
        _, resources = await rpc(session, request("resources/list"))
        _, templates = await rpc(session, request("resources/templates/list"))
        _, problems = await rpc(session, request("resources/read", {"uri": "kfoundry://problems"}))
        _, missing = await rpc(session, request("resources/read", {"uri": "kfoundry://problems/nosuch/cpp"}))
        _, unmatched = await rpc(session, request("resources/read", {"uri": "kfoundry://nothing-here"}))

    assert {"kfoundry://runs", "kfoundry://problems"} <= {r["uri"] for r in resources["result"]["resources"]}
    assert {t["uriTemplate"] for t in templates["result"]["resourceTemplates"]} == {
        "kfoundry://runs/{run_id}/{artifact}", "kfoundry://problems/{name}/{part}", "kfoundry://schemas/{tool}",
    }
    contents = problems["result"]["contents"][0]
    assert contents["mimeType"] == "application/json" and json.loads(contents["text"])
    assert missing["error"]["code"] == -32602 and unmatched["error"]["code"] == -32602


async def test_prompts_list_is_empty_and_getting_an_unknown_prompt_is_invalid_params(server: Server) -> None:
    async with token_client(server) as http:
        session = await open_session(http, server)
        _, listed = await rpc(session, request("prompts/list"))
        _, unknown = await rpc(session, request("prompts/get", {"name": "optimize"}))

    assert listed["result"]["prompts"] == []
    assert unknown["error"]["code"] == -32602 and "optimize" in unknown["error"]["message"]


async def test_a_deleted_session_is_gone(server: Server) -> None:
    async with token_client(server) as http:
        session = await open_session(http, server)
        with anyio.fail_after(30):
            deleted = await http.delete(session.url, headers=session.headers())
            after = await http.post(session.url, json=request("ping"), headers=session.headers())

    assert deleted.status_code == 200
    assert after.status_code == 404


async def test_a_request_without_a_token_is_refused_before_any_mcp(server: Server) -> None:
    async with httpx2.AsyncClient(timeout=30.0) as http:
        response = await http.post(server.mcp_url, json=request("ping"), headers=MCP_HEADERS)

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
