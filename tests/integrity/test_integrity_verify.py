"""Adversarial suite: cheating candidates are rejected (or mismatch) for the right reason; honest ones are correct."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from candidates import REFERENCE
from integrity_candidates import CHEATS, HONEST
from mcp import Client
from mcp_support import ok

pytestmark = pytest.mark.anyio


async def _verify(client: Client, backend: str, source: str, **extra: object) -> dict:
    timeout = 150 if backend == "triton" else 60
    arguments = {"backend": backend, "reference": REFERENCE, "candidate": source, "trials": 2, "timeout_s": timeout, **extra}
    return await ok(client, "verify", arguments, within=timeout + 30)


@pytest.mark.parametrize("name", sorted(CHEATS))
async def test_a_cheating_candidate_is_caught_for_the_right_reason(client: Client, name: str) -> None:
    backend, source, states, codes = CHEATS[name]

    data = await _verify(client, backend, source)

    assert data["state"] in states, data
    found = {f["code"] for f in data["findings"] if f["blocking"]}
    if data["state"] == "mismatch":
        found.add("mismatch")
    assert found & codes, f"{name}: expected one of {codes}, got {found}: {data['findings']} {data.get('mismatch')}"
    for finding in data["findings"]:
        assert finding["message"], finding


@pytest.mark.parametrize("name", sorted(HONEST))
async def test_an_honest_candidate_is_correct(client: Client, name: str) -> None:
    backend, source = HONEST[name]

    data = await _verify(client, backend, source)

    assert data["state"] == "correct", data
    assert data["trials_passed"] == data["trials"] == 2
    assert [f for f in data["findings"] if f["blocking"]] == []


async def test_static_findings_name_the_rule_and_the_line(client: Client) -> None:
    _, source, _, _ = CHEATS["sets_tf32_flag"]
    line = source.splitlines().index("torch.backends.cuda.matmul.allow_tf32 = True") + 1

    data = await _verify(client, "cpp", source)

    finding = next(f for f in data["findings"] if f["code"] == "precision_flags")
    assert f"candidate.py:{line}:" in finding["message"] and finding["blocking"]


async def test_a_rule_set_to_warn_by_a_tool_argument_lets_the_candidate_run(client: Client) -> None:
    _, source, _, _ = CHEATS["kernel_plus_torch_epilogue"]

    data = await _verify(client, "cpp", source, guardrails={"rules": {"torch_compute": "warn"}})

    assert data["state"] == "correct", data
    warned = [f for f in data["findings"] if f["code"] == "torch_compute"]
    assert warned and not warned[0]["blocking"] and "aten::mul" in warned[0]["message"]


async def test_allowed_torch_ops_are_not_findings(client: Client) -> None:
    _, source, _, _ = CHEATS["kernel_plus_torch_epilogue"]

    data = await _verify(client, "cpp", source, guardrails={"allow_torch_ops": ["mul"]})

    assert data["state"] == "correct", data
    assert [f for f in data["findings"] if f["code"] == "torch_compute"] == []


async def test_the_config_file_sets_severities_and_tool_arguments_override_it(client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "guardrails.json"
    config.write_text(json.dumps({"rules": {"precision_flags": "off", "numerics_flags": "off"}, "backends": {"cpp": {"banned": [r"omp\s+parallel"]}}}))
    monkeypatch.setenv("KFOUNDRY_GUARDRAILS", str(config))
    _, flag_source, _, _ = CHEATS["sets_matmul_precision"]

    from_file = await _verify(client, "cpp", flag_source)
    overridden = await _verify(client, "cpp", flag_source, guardrails={"rules": {"precision_flags": "block"}})
    banned = await _verify(client, "cpp", HONEST["two_kernels_openmp_inplace_views"][1])

    assert from_file["state"] == "correct", from_file
    assert overridden["state"] == "rejected" and "precision_flags" in [f["code"] for f in overridden["findings"]]
    assert banned["state"] == "rejected" and [f["code"] for f in banned["findings"]] == ["banned_pattern"]


async def test_an_unknown_rule_id_is_a_tool_error(client: Client) -> None:
    from mcp_support import call

    result = await call(client, "verify", {"backend": "cpp", "reference": REFERENCE, "candidate": HONEST["prelude_kernel_through_helper"][1],
                                           "guardrails": {"rules": {"no_such_rule": "block"}}})

    assert result.is_error
