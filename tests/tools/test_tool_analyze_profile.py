"""`analyze_profile` over MCP: from a profile run_id or raw profiler text; bad input is a tool error."""

from __future__ import annotations

import uuid

import pytest
import torch
from candidates import CORRECT_CPP, REFERENCE
from mcp import Client
from mcp_support import call, error_text, ok
from torch.profiler import ProfilerActivity, profile

from kfoundry.schema import Action, Bottleneck

pytestmark = pytest.mark.anyio

BOTTLENECKS = {b.value for b in Bottleneck}


def torch_profiler_table() -> str:
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            torch.relu(a @ b + 1.0)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)


async def test_a_profile_run_id_gives_a_bottleneck_digest_recommendation_and_evidence(client: Client) -> None:
    # A problem of its own (a unique comment changes the reference's text): other tests' profiles are not its history.
    reference = REFERENCE + f"\n# {uuid.uuid4().hex}\n"
    arguments = {"backend": "cpp", "reference": reference, "candidate": CORRECT_CPP, "baselines": ["eager"], "reps": 5, "trials": 1}
    profiled = await ok(client, "profile", arguments, within=240)
    assert profiled["state"] == "correct", profiled

    data = await ok(client, "analyze_profile", {"profile": profiled["run_id"]})

    assert data["bottleneck"] in BOTTLENECKS
    assert data["digest"].strip() and data["recommendation"].strip()
    assert data["evidence"]
    assert data["profile_run_id"] == profiled["run_id"]
    assert data["source"] == "rules"
    # The choice as data: an agent can act on it without parsing the digest's text.
    assert data["action"] in {a.value for a in Action}
    assert f"recommendation [{data['action']}]" in data["digest"]
    assert data["gap_kernel"] and data["gap_kernel"] in data["digest"]
    if data["action"] == "stop":
        assert data["expected_gain_ms"] is None
    else:
        assert 0 < data["expected_gain_ms"] and data["expected_ms"] is not None
    assert data["history"] == []  # the first profile of this problem by this caller


async def test_a_raw_torch_profiler_table_is_analyzed(client: Client) -> None:
    data = await ok(client, "analyze_profile", {"profile": torch_profiler_table()})

    assert data["bottleneck"] in BOTTLENECKS
    assert "aten::" in data["digest"], data["digest"]
    assert data["recommendation"].strip()
    assert data["profile_run_id"] is None


async def test_an_unknown_run_id_is_a_tool_error_that_says_to_pass_a_profile_run_id(client: Client) -> None:
    result = await call(client, "analyze_profile", {"profile": "profile-20990101T000000-abcdef"})

    assert result.is_error
    message = error_text(result)
    assert "profile-20990101T000000-abcdef" in message and "run_id" in message


async def test_empty_profile_text_is_a_tool_error(client: Client) -> None:
    result = await call(client, "analyze_profile", {"profile": ""})

    assert result.is_error
    assert "profile is empty" in error_text(result)
