"""Progress notifications and resources, as an MCP client sees them."""

from __future__ import annotations

import json

import pytest
from candidates import CORRECT_CPP, REFERENCE
from mcp import Client
from mcp_support import call, read, verify

from kfoundry import examples

pytestmark = pytest.mark.anyio


async def test_a_verify_call_reports_progress_while_queued_and_running(client: Client) -> None:
    messages: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append((progress, message))

    arguments = {"backend": "cpp", "reference": REFERENCE, "candidate": CORRECT_CPP, "trials": 2}
    result = await call(client, "verify", arguments, progress=on_progress)

    assert not result.is_error
    assert len(messages) >= 2, messages
    assert any("queued" in (m or "") for _, m in messages), messages
    assert messages[-1] == (1.0, "correct")


async def test_a_verify_run_is_readable_as_a_result_json_resource(client: Client) -> None:
    data = await verify(client, CORRECT_CPP)

    stored = json.loads(await read(client, f"kfoundry://runs/{data['run_id']}/result.json"))

    assert stored == data


async def test_the_problems_resource_lists_the_six_bundled_problems(client: Client) -> None:
    listed = json.loads(await read(client, "kfoundry://problems"))

    names = [p["name"] for p in listed]
    assert names == ["elementwise", "layernorm", "matmul_epilogue", "reduction", "rmsnorm_scale", "softmax"]
    assert all({"cpp", "triton"} <= set(p["solutions"]) for p in listed)


async def test_a_problem_part_resource_returns_the_bundled_source(client: Client) -> None:
    text = await read(client, "kfoundry://problems/softmax/cpp")

    assert text == examples.source("softmax", "cpp")
