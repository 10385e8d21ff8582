"""What a host loads into every conversation: a small tool listing, honest hints, compact results, clean errors."""

from __future__ import annotations

import json
from typing import Any

import anyio
import jsonschema
import pytest
from candidates import CORRECT_CPP, REFERENCE
from mcp import Client, MCPError
from mcp.types import INVALID_PARAMS, ListToolsResult
from mcp_support import call, error_text, read

from kfoundry.backends import names as backend_names
from kfoundry.server.listing import result_text

pytestmark = pytest.mark.anyio

#: What a host may spend on our tools in every conversation (~4k tokens); README "MCP interface" quotes it.
LISTING_BUDGET_BYTES = 16 * 1024
RUNS_CODE = {"compile", "verify", "profile", "translate_reference"}


async def listing(client: Client) -> ListToolsResult:
    with anyio.fail_after(10):
        return await client.list_tools()


def wire_size(value: Any) -> int:
    return len(json.dumps(value.model_dump(by_alias=True, mode="json", exclude_none=True), separators=(",", ":")).encode())


async def test_the_tool_listing_stays_within_its_16_kib_budget(client: Client) -> None:
    listed = await listing(client)

    assert len(listed.tools) == 6
    assert wire_size(listed) <= LISTING_BUDGET_BYTES, {t.name: wire_size(t) for t in listed.tools}


async def test_every_tool_has_a_title_and_hints_that_say_it_runs_code_when_it_does(client: Client) -> None:
    for tool in (await listing(client)).tools:
        hints = tool.annotations
        assert tool.title and tool.title != tool.name, tool.name
        assert hints is not None, tool.name
        assert hints.read_only_hint is (tool.name == "backends"), tool.name
        assert (hints.destructive_hint, hints.open_world_hint) == (False, False), tool.name
        assert hints.idempotent_hint is (tool.name == "backends"), tool.name


async def test_descriptions_name_every_registered_backend(client: Client) -> None:
    tools = {tool.name: tool for tool in (await listing(client)).tools}

    assert all(name in (tools["compile"].description or "") for name in backend_names())


async def test_every_listed_schema_is_valid_json_schema_and_describes_every_argument(client: Client) -> None:
    for tool in (await listing(client)).tools:
        jsonschema.Draft202012Validator.check_schema(tool.input_schema)
        assert tool.output_schema is not None, tool.name
        jsonschema.Draft202012Validator.check_schema(tool.output_schema)
        assert all(spec.get("description") for spec in tool.input_schema.get("properties", {}).values()), tool.name


async def test_a_tools_full_schemas_are_a_resource_with_every_field_described(client: Client) -> None:
    full = json.loads(await read(client, "kfoundry://schemas/verify"))

    guardrails = full["input"]["$defs"]["Guardrails"]["properties"]
    assert "stale_memory" in guardrails["rules"]["description"]
    assert full["output"]["$defs"]["MismatchDetail"]["properties"]["max_abs_error"] is not None
    assert full["output"]["properties"]["precision"]["description"]


async def test_an_unknown_tool_schema_is_an_invalid_params_error_listing_the_tools(client: Client) -> None:
    with pytest.raises(MCPError) as raised, anyio.fail_after(10):
        await client.read_resource("kfoundry://schemas/fortran")

    assert raised.value.code == INVALID_PARAMS
    assert "fortran" in raised.value.message and "verify" in raised.value.message


async def test_a_result_text_is_a_summary_line_then_the_structured_content_as_compact_json(client: Client) -> None:
    result = await call(client, "backends", {}, within=60)

    first, second = error_text(result).split("\n")
    data = result.structured_content
    assert data is not None
    assert first.startswith(f"backends: best {data['best']}; available: ")
    shown = json.loads(second)
    assert json.dumps(shown, separators=(",", ":"), ensure_ascii=False) == second
    assert shown["best"] == data["best"] and shown["backends"][0]["name"] == data["backends"][0]["name"]
    assert all(value not in (None, "", [], {}) for value in shown.values())


async def test_a_verify_result_matches_its_listed_outline_and_its_text_leads_with_the_verdict(client: Client) -> None:
    outline = next(t for t in (await listing(client)).tools if t.name == "verify").output_schema
    arguments = {"backend": "cpp", "reference": REFERENCE, "candidate": CORRECT_CPP, "trials": 1}

    result = await call(client, "verify", arguments)

    assert not result.is_error, error_text(result)
    jsonschema.validate(result.structured_content, outline)
    assert error_text(result).startswith("verify: correct, 1/1 trials passed (cpp on cpu); run verify-")


async def test_progress_only_rises_toward_a_stable_total_and_ends_at_it(client: Client) -> None:
    for tool, arguments in [
        ("verify", {"backend": "cpp", "reference": REFERENCE, "candidate": CORRECT_CPP, "trials": 3}),
        ("translate_reference", {"reference": REFERENCE, "target_backend": "cpp"}),
        ("profile", {"backend": "cpp", "reference": REFERENCE, "candidate": CORRECT_CPP, "trials": 2, "reps": 3, "baselines": ["eager"]}),
    ]:
        seen: list[tuple[float, float | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total))  # noqa: B023 - awaited within this iteration

        result = await call(client, tool, arguments, progress=on_progress)

        assert not result.is_error, error_text(result)
        values = [progress for progress, _ in seen]
        assert len(values) >= 3, (tool, seen)
        assert all(b > a for a, b in zip(values, values[1:], strict=False)), (tool, values)
        assert {total for _, total in seen} == {1.0}, (tool, seen)
        assert values[-1] == 1.0, (tool, values)


async def test_an_unknown_prompt_is_an_invalid_params_error_with_a_plain_message(client: Client) -> None:
    with pytest.raises(MCPError) as raised, anyio.fail_after(10):
        await client.get_prompt("optimize_kernel")

    assert raised.value.code == INVALID_PARAMS
    assert raised.value.message.startswith("unknown prompt 'optimize_kernel'"), raised.value.message


@pytest.mark.parametrize(
    ("uri", "names"),
    [("kfoundry://runs/verify-20990101T000000-abcdef/result.json", "verify-20990101T000000-abcdef"), ("kfoundry://problems/nosuch/cpp", "nosuch")],
)
async def test_a_missing_run_or_problem_is_an_invalid_params_error_quoted_once(client: Client, uri: str, names: str) -> None:
    with pytest.raises(MCPError) as raised, anyio.fail_after(10):
        await client.read_resource(uri)

    assert raised.value.code == INVALID_PARAMS
    assert names in raised.value.message
    assert not raised.value.message.startswith(("'", '"')), raised.value.message


async def test_one_rejected_argument_is_one_line_naming_the_field_and_what_it_takes(client: Client) -> None:
    result = await call(client, "verify", {"backend": "cpp", "reference": REFERENCE, "candidate": CORRECT_CPP, "trials": 0}, within=30)

    assert result.is_error
    message = error_text(result)
    assert "\n" not in message, message
    assert message.startswith("Error executing tool verify: invalid argument trials: Input should be greater than or equal to 1 (got 0)."), message
    assert "Expected: Trials with fresh secret-seeded inputs (1 to 100)." in message


def test_a_result_text_leaves_out_empty_fields_and_what_a_nested_record_repeats_of_its_parent() -> None:
    data = {
        "state": "correct", "backend": "cpp", "device": "cpu", "run_id": "profile-x", "warnings": [], "error": None,
        "candidate": {"median_ms": 0.5}, "speedup_vs_eager": 2.0,
        "verify": {"state": "correct", "backend": "cpp", "device": "cpu", "run_id": "profile-x", "trials_passed": 3, "trials": 3, "findings": []},
    }

    first, second = result_text("profile", data).split("\n")

    assert first == "profile: correct (cpp on cpu), median 0.5 ms, 2x vs eager; run profile-x"
    assert json.loads(second) == {
        "state": "correct", "backend": "cpp", "device": "cpu", "run_id": "profile-x", "candidate": {"median_ms": 0.5},
        "speedup_vs_eager": 2.0, "verify": {"trials_passed": 3, "trials": 3},
    }
