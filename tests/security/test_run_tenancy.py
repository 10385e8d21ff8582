"""Over HTTP each token sees only its own runs: bob cannot list, read or analyze alice's, nor tell them from ids nobody made.

Every refusal bob meets for alice's run is compared with the one he meets for a made-up id of
the same shape, with the id blanked out in both: any other difference would tell him the run exists.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from candidates import CORRECT_CPP, REFERENCE
from http_support import Server, connect
from mcp import Client, MCPError
from mcp.types import CallToolResult

pytestmark = pytest.mark.anyio

MADE_UP = "profile-20990101T000000-abcdef"
ARTIFACTS = ["result.json", "candidate.py", "reference.py", "job.json"]
PROFILE_TEXT = "Name  Self CPU %  Self CPU  CPU total  # of Calls\naten::addmm  80.00%  8.000ms  8.000ms  3\naten::relu  20.00%  2.000ms  2.000ms  3\n"


async def listed_runs(client: Client) -> list[str]:
    with anyio.fail_after(30):
        resource = await client.read_resource("kfoundry://runs")
    return json.loads(resource.contents[0].text)


async def read_artifact(client: Client, run_id: str, artifact: str) -> str:
    with anyio.fail_after(30):
        resource = await client.read_resource(f"kfoundry://runs/{run_id}/{artifact}")
    return resource.contents[0].text


async def read_refusal(client: Client, run_id: str, artifact: str) -> tuple[int, str, Any] | None:
    """The protocol error for reading ``run_id``'s ``artifact`` with the id blanked out, or None if it was read.

    Returned rather than asserted, so that a failing check does not unwind through the open client.
    """
    try:
        with anyio.fail_after(30):
            await client.read_resource(f"kfoundry://runs/{run_id}/{artifact}")
    except MCPError as refused:
        blank = json.loads(json.dumps(refused.data).replace(run_id, "<id>"))
        return refused.code, refused.message.replace(run_id, "<id>"), blank
    return None


async def analyze(client: Client, profile: str, *, within: float = 60.0) -> CallToolResult:
    with anyio.fail_after(within):
        return await client.call_tool("analyze_profile", {"profile": profile})


def text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


@pytest.fixture(scope="module")
async def alices_run(server: Server) -> str:
    """A finished profile run made with alice's token."""
    arguments = {"backend": "cpp", "reference": REFERENCE, "candidate": CORRECT_CPP, "baselines": ["eager"], "reps": 5, "trials": 1}
    async with connect(server, "alice") as alice:
        with anyio.fail_after(240):
            result = await alice.call_tool("profile", arguments)
    assert not result.is_error, text(result)
    assert result.structured_content is not None and result.structured_content["state"] == "correct", result.structured_content
    return result.structured_content["run_id"]


async def test_the_run_records_the_token_name_that_made_it_on_disk(server: Server, alices_run: str) -> None:
    assert (server.home / "runs" / alices_run / "owner").read_text() == "alice"


async def test_alice_lists_her_run_and_bob_lists_only_his_own(server: Server, alices_run: str) -> None:
    async with connect(server, "bob") as bob:
        bobs = await analyze(bob, PROFILE_TEXT)
        assert not bobs.is_error, text(bobs)
        bobs_run = bobs.structured_content["run_id"]
        seen_by_bob = await listed_runs(bob)
    async with connect(server, "alice") as alice:
        seen_by_alice = await listed_runs(alice)

    assert alices_run in seen_by_alice and bobs_run not in seen_by_alice
    assert bobs_run in seen_by_bob and alices_run not in seen_by_bob


@pytest.mark.parametrize("artifact", ARTIFACTS)
async def test_alice_reads_every_artifact_of_her_run(server: Server, alices_run: str, artifact: str) -> None:
    async with connect(server, "alice") as alice:
        content = await read_artifact(alice, alices_run, artifact)

    assert content.strip()
    if artifact == "result.json":
        assert json.loads(content)["run_id"] == alices_run
    if artifact == "job.json":
        assert json.loads(content)["caller"] == "alice"


@pytest.mark.parametrize("artifact", ARTIFACTS)
async def test_bob_reading_alices_artifact_gets_the_error_a_made_up_run_id_gets(server: Server, alices_run: str, artifact: str) -> None:
    async with connect(server, "bob") as bob:
        for_alices = await read_refusal(bob, alices_run, artifact)
        for_made_up = await read_refusal(bob, MADE_UP, artifact)

    assert for_made_up is not None
    assert for_alices == for_made_up
    assert "alice" not in for_made_up[1]


async def test_alice_analyzes_her_profile_run_by_id(server: Server, alices_run: str) -> None:
    async with connect(server, "alice") as alice:
        result = await analyze(alice, alices_run)

    assert not result.is_error, text(result)
    assert result.structured_content is not None and result.structured_content["profile_run_id"] == alices_run


async def test_bob_analyzing_alices_run_gets_the_tool_error_a_made_up_profile_run_id_gets(server: Server, alices_run: str) -> None:
    async with connect(server, "bob") as bob:
        for_alices = await analyze(bob, alices_run)
        for_made_up = await analyze(bob, MADE_UP)

    assert for_alices.is_error and for_made_up.is_error
    assert text(for_alices).replace(alices_run, "<id>") == text(for_made_up).replace(MADE_UP, "<id>")
    assert for_alices.structured_content is None and for_made_up.structured_content is None
