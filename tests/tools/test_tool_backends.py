"""`backends` over MCP on a CPU-only host with TRITON_INTERPRET=1."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp_support import ok

pytestmark = pytest.mark.anyio


async def test_cpp_is_available_triton_runs_interpreted_and_cpp_is_best(client: Client) -> None:
    data = await ok(client, "backends", {})

    by_name = {b["name"]: b for b in data["backends"]}
    assert by_name["cpp"]["available"] is True
    assert by_name["cpp"]["version"]
    assert by_name["triton"]["available"] is True
    assert by_name["triton"]["interpreted"] is True
    assert "interpreter" in by_name["triton"]["reason"]
    assert data["best"] == "cpp"
    assert data["devices"] == ["cpu"]
