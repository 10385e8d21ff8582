"""Bad arguments are tool errors (is_error) whose message says what to send instead.

The tools' arguments are their request models' fields (``kfoundry.tools.requests``), listed by
name as top-level properties; these tests check that listing and the rejections without
running a job.
"""

from __future__ import annotations

import re
from typing import Any, get_args

import anyio
import pytest
from candidates import CORRECT_CPP, REFERENCE
from mcp import Client
from mcp.types import Tool
from mcp_support import call, error_text
from pydantic import BaseModel, ValidationError

from kfoundry.artifacts import open_run
from kfoundry.backends import names as backend_names
from kfoundry.errors import BadRequest
from kfoundry.server.app import KfoundryServer
from kfoundry.server.listing import compact_input
from kfoundry.tools.requests import (
    AnalyzeRequest,
    CompileRequest,
    PrecisionName,
    ProfileRequest,
    StressFamily,
    TranslateRequest,
    VerifyRequest,
    explain,
)

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


# The arguments clients send by name, with their defaults (REQUIRED: no default), per tool.
REQUIRED = object()
ARGUMENTS: dict[str, dict[str, Any]] = {
    "compile": {"backend": REQUIRED, "candidate": REQUIRED, "reference": None, "timeout_s": None},
    "verify": {
        "backend": REQUIRED, "reference": REQUIRED, "candidate": REQUIRED, "trials": 5, "atol": None, "rtol": None,
        "guardrails": None, "timeout_s": None, "precision": "strict", "stress": None,
    },
    "profile": {
        "backend": REQUIRED, "reference": REQUIRED, "candidate": REQUIRED, "baselines": None, "hardware_counters": False,
        "reps": None, "warmup": 3, "trials": 3, "atol": None, "rtol": None, "guardrails": None, "cuda_graph": False,
        "timeout_s": None, "precision": "strict", "stress": None,
    },
    "analyze_profile": {"profile": REQUIRED, "candidate": None, "images": None},
    "translate_reference": {
        "reference": REQUIRED, "target_backend": REQUIRED, "source_backend": "pytorch", "source_code": None, "sample": False,
        "timeout_s": None,
    },
}
REQUESTS: dict[str, type[BaseModel]] = {
    "compile": CompileRequest, "verify": VerifyRequest, "profile": ProfileRequest,
    "analyze_profile": AnalyzeRequest, "translate_reference": TranslateRequest,
}


async def listed_tools(client: Client) -> dict[str, Tool]:
    with anyio.fail_after(5):
        return {tool.name: tool for tool in (await client.list_tools()).tools}


async def test_every_tool_lists_its_arguments_as_top_level_properties_with_their_defaults(client: Client) -> None:
    tools = await listed_tools(client)

    for name, expected in ARGUMENTS.items():
        schema = tools[name].input_schema
        assert list(schema["properties"]) == list(expected), name
        assert schema["required"] == [arg for arg, default in expected.items() if default is REQUIRED], name
        defaults = {arg: spec.get("default", REQUIRED) for arg, spec in schema["properties"].items()}
        assert defaults == expected, name


async def test_each_listed_argument_is_its_request_models_field_schema_in_compact_form(client: Client) -> None:
    tools = await listed_tools(client)

    for name, request in REQUESTS.items():
        schema, model = tools[name].input_schema, compact_input(request.model_json_schema())
        assert schema["properties"] == model["properties"], name
        assert "$defs" not in schema, name


async def test_every_argument_is_described_and_backends_are_named_from_the_registry(client: Client) -> None:
    tools = await listed_tools(client)

    for name in ARGUMENTS:
        for arg, spec in tools[name].input_schema["properties"].items():
            assert spec.get("description", "").strip(), f"{name}.{arg} has no description"
    # The registry's names are listed once, in compile's description (repeated in every backend argument they
    # would cost the listing ~60 bytes each, per backend added); each argument points there and at `backends`,
    # and quotes no name the registry lacks.
    assert all(backend in (tools["compile"].description or "") for backend in backend_names())
    for name, arg in [("compile", "backend"), ("verify", "backend"), ("profile", "backend"), ("translate_reference", "target_backend")]:
        description = tools[name].input_schema["properties"][arg]["description"]
        assert "`backends`" in description, description
        assert set(re.findall(r"'([a-z]+)'", description)) <= set(backend_names()), description


async def test_bounds_are_published_in_the_schema(client: Client) -> None:
    properties = (await listed_tools(client))["profile"].input_schema["properties"]

    reps = properties["reps"]["anyOf"][0]
    assert (reps["minimum"], reps["maximum"]) == (1, 1000)
    assert (properties["warmup"]["minimum"], properties["warmup"]["maximum"]) == (0, 100)
    assert (properties["trials"]["minimum"], properties["trials"]["maximum"]) == (1, 100)
    assert properties["timeout_s"]["anyOf"][0]["exclusiveMinimum"] == 0
    assert properties["precision"]["enum"] == ["strict", "tf32", "bf16", "fp16"]


BAD_ARGUMENTS = [
    ("verify", {**GOOD, "trials": 0}, ["trials", "greater than or equal to 1", "got 0"]),
    ("verify", {**GOOD, "atol": -1}, ["atol", "greater than or equal to 0"]),
    ("verify", {**GOOD, "precision": "fp8"}, ["precision", "'strict'", "'fp16'", "got 'fp8'"]),
    ("verify", {**GOOD, "stress": ["huge"]}, ["stress[0]", "'signed'", "'tiny'"]),
    ("verify", {**GOOD, "guardrails": {"banned": ["("]}}, ["guardrails.banned", "invalid regex"]),
    ("profile", {**GOOD, "reps": 5000}, ["reps", "less than or equal to 1000"]),
    ("profile", {**GOOD, "timeout_s": 0}, ["timeout_s", "greater than 0"]),
    ("compile", {"backend": "cpp", "candidate": CORRECT_CPP, "reference": ""}, ["reference is empty", "KernelBench"]),
    ("translate_reference", {"reference": REFERENCE, "target_backend": "cpp", "source_backend": "fortran"}, ["source_backend", "'pytorch'", "cpp"]),
    ("translate_reference", {"reference": REFERENCE, "target_backend": "cpp", "source_backend": "triton"}, ["source_code is required", "'triton'"]),
    ("analyze_profile", {"profile": ""}, ["profile is empty", "run_id"]),
    ("analyze_profile", {"profile": "x", "images": ["not base64!"]}, ["images[0]", "base64"]),
]


@pytest.mark.parametrize(("tool", "arguments", "wanted"), BAD_ARGUMENTS, ids=[f"{t}-{'-'.join(w[:1])}" for t, _, w in BAD_ARGUMENTS])
async def test_a_rejected_argument_names_the_field_and_what_it_allows_without_pydantic_internals(
    client: Client, tool: str, arguments: dict[str, Any], wanted: list[str]
) -> None:
    message = await rejected_arguments(client, tool, arguments)

    assert message.startswith(f"Error executing tool {tool}: invalid argument"), message
    for text in wanted:
        assert text in message, message
    for internal in ("validation error for", "errors.pydantic.dev", "[type=", "Arguments", "Request", "Value error,"):
        assert internal not in message, message


async def test_a_field_rejected_for_its_type_says_what_the_field_takes(client: Client) -> None:
    message = await rejected_arguments(client, "verify", {**GOOD, "trials": "many"})

    assert "trials: Input should be a valid integer" in message
    assert f"Expected: {VerifyRequest.model_fields['trials'].description}" in message


async def test_a_kfoundry_error_reaches_the_client_with_its_message_unchanged(client: Client) -> None:
    run_id = "profile-20990101T000000-abcdef"
    with pytest.raises(BadRequest) as raised:
        open_run(run_id)

    message = await rejected_arguments(client, "analyze_profile", {"profile": run_id})

    assert message == f"Error executing tool analyze_profile: {raised.value}"


async def test_request_tools_get_the_validated_model_and_other_failures_stay_withheld() -> None:
    server = KfoundryServer("probe")
    seen: list[AnalyzeRequest] = []

    @server.request_tool(name="echo", description="Echo the request.")
    async def echo(request: AnalyzeRequest) -> dict[str, str]:
        seen.append(request)
        return {"profile": request.profile}

    @server.tool(name="refuse")
    async def refuse() -> str:
        raise BadRequest("send a smaller candidate")

    @server.tool(name="crash")
    async def crash() -> str:
        raise RuntimeError("secret detail")

    async with Client(server) as probe:
        with anyio.fail_after(5):
            echoed = await probe.call_tool("echo", {"profile": "  text  ", "images": None})
            refused = await probe.call_tool("refuse", {})
            crashed = await probe.call_tool("crash", {})

    assert echoed.structured_content == {"profile": "  text  "}
    assert seen == [AnalyzeRequest(profile="  text  ")]
    assert (refused.is_error, error_text(refused)) == (True, "Error executing tool refuse: send a smaller candidate")
    assert (crashed.is_error, error_text(crashed)) == (True, "Error executing tool crash")


def test_requests_normalize_backends_and_drop_repeated_families() -> None:
    request = ProfileRequest(backend=" CPP ", reference=REFERENCE, candidate=CORRECT_CPP, baselines=["eager", "eager"], stress=["tiny", "tiny"])

    assert (request.backend, request.baselines, request.stress) == ("cpp", ["eager"], ["tiny"])
    assert TranslateRequest(reference=REFERENCE, target_backend="Triton", source_backend=" PyTorch").source_backend == "pytorch"


def test_the_request_literals_match_the_policies_and_stress_families_they_name() -> None:
    from kfoundry.verify.precision import POLICIES
    from kfoundry.verify.stress import FAMILIES

    assert set(get_args(PrecisionName)) == set(POLICIES)
    assert get_args(StressFamily) == tuple(FAMILIES)


def test_explain_lists_every_problem_on_its_own_line() -> None:
    with pytest.raises(ValidationError) as raised:
        VerifyRequest.model_validate({"backend": "cpp", "candidate": 42, "trials": 101})

    lines = explain(raised.value, VerifyRequest).splitlines()

    assert lines[0] == "invalid arguments; fix and call again:"
    assert [line.split(":")[0] for line in lines[1:]] == ["- reference", "- candidate", "- trials"]
    assert "required but missing" in lines[1]
