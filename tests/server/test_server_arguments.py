"""Bad arguments are tool errors (is_error) whose message says what to send instead."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client

from candidates import CORRECT_CPP, REFERENCE
from mcp_support import call, error_text

pytestmark = pytest.mark.anyio

GOOD: dict[str, Any] = {"backend": "cpp", "reference": REFERENCE, "candidate": CORRECT_CPP}


async def rejected_arguments(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    result = await call(client, tool, arguments, within=30)
    assert result.is_error, result.structured_content
    return error_text(result)


@pytest.mark.parametrize("tool", ["compile", "verify", "profile"])
async def test_an_unknown_backend_is_a_tool_error_listing_the_known_backends(client: Client, tool: str) -> None:
    arguments = {**GOOD, "backend": "fortran"}
    if tool == "compile":
        del arguments["reference"]

    message = await rejected_arguments(client, tool, arguments)

    assert "fortran" in message
    assert "cpp" in message and "triton" in message


async def test_an_unknown_target_backend_for_translate_reference_is_a_tool_error(client: Client) -> None:
    message = await rejected_arguments(client, "translate_reference", {"reference": REFERENCE, "target_backend": "fortran"})

    assert "cpp" in message and "triton" in message


async def test_an_empty_candidate_is_a_tool_error_asking_for_the_module_source(client: Client) -> None:
    message = await rejected_arguments(client, "verify", {**GOOD, "candidate": "   \n"})

    assert "candidate is empty" in message
    assert "ModelNew" in message


async def test_a_ten_megabyte_candidate_is_a_tool_error_naming_the_limit(client: Client) -> None:
    message = await rejected_arguments(client, "verify", {**GOOD, "candidate": CORRECT_CPP + "#" * (10 << 20)})

    assert "candidate is" in message and "the limit is" in message


async def test_a_missing_reference_is_a_tool_error_naming_the_field(client: Client) -> None:
    message = await rejected_arguments(client, "verify", {"backend": "cpp", "candidate": CORRECT_CPP})

    assert "reference" in message
    assert "required" in message.lower()


async def test_zero_trials_is_a_tool_error_giving_the_lower_bound(client: Client) -> None:
    message = await rejected_arguments(client, "verify", {**GOOD, "trials": 0})

    assert "trials" in message
    assert "greater than or equal to 1" in message


async def test_a_candidate_sent_as_a_number_is_a_tool_error_asking_for_a_string(client: Client) -> None:
    message = await rejected_arguments(client, "verify", {**GOOD, "candidate": 42})

    assert "candidate" in message
    assert "string" in message


async def test_an_unknown_baseline_is_a_tool_error_listing_the_allowed_ones(client: Client) -> None:
    message = await rejected_arguments(client, "profile", {**GOOD, "baselines": ["numpy"]})

    assert "'eager'" in message and "'compile'" in message
