"""Precision policies on the GPU: TF32 and bf16 GEMM + epilogue candidates, judged and timed under their policy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from mcp import Client
from precision_cases import CANDIDATES, REFERENCE

from kfoundry.server.app import build_server

pytestmark = [pytest.mark.gpu, pytest.mark.anyio]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(anyio_backend: str) -> AsyncIterator[Client]:
    async with Client(build_server()) as c:
        yield c


async def _call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    with anyio.fail_after(400):
        result = await client.call_tool(tool, {"backend": "triton", "reference": REFERENCE, **arguments}, read_timeout_seconds=390)
    assert not result.is_error, result.content
    return result.structured_content or {}


@pytest.mark.parametrize("policy", ["tf32", "bf16"])
async def test_a_reduced_precision_gemm_is_correct_under_its_policy_within_the_honest_error(client: Client, policy: str) -> None:
    data = await _call(client, "verify", candidate=CANDIDATES[policy], precision=policy, trials=2)

    assert data["state"] == "correct", data
    [check] = data["precision_checks"]
    assert check["passed"] and check["candidate_error"] <= check["bound"]
    assert check["honest_error"] > 0


@pytest.mark.parametrize("policy", ["tf32", "bf16"])
async def test_the_same_gemm_is_a_mismatch_under_strict_for_its_reduced_precision_with_an_early_warning(client: Client, policy: str) -> None:
    data = await _call(client, "verify", candidate=CANDIDATES[policy], precision="strict", trials=1)

    # The static rule warns before anything runs; the measured error against the float64 oracle decides.
    assert data["state"] == "mismatch", data
    assert data["mismatch"]["reason"] in ("values", "precision")
    assert "precision_downcast" in {f["code"] for f in data["findings"] if not f["blocking"]}
    [check] = data["precision_checks"]
    assert not check["passed"] and check["candidate_error"] > check["bound"]


@pytest.mark.parametrize("policy", ["tf32", "bf16"])
async def test_profile_reports_speedups_against_same_policy_and_strict_baselines(client: Client, policy: str) -> None:
    data = await _call(client, "profile", candidate=CANDIDATES[policy], precision=policy, trials=1, reps=10, warmup=2, baselines=["eager"])

    assert data["state"] == "correct", data
    speedups = {s["precision"]: s for s in data["speedups"] if s["baseline"] == "eager"}
    assert set(speedups) == {policy, "strict"}
    # The strict baseline computes in fp32 without tensor cores: slower than eager given the same freedom.
    assert speedups["strict"]["median_ms"] > speedups[policy]["median_ms"]
    assert speedups["strict"]["speedup"] > speedups[policy]["speedup"]
    assert data["roofline"]["peak_flops"] > 100e12  # priced at the policy's tensor-core peak, not fp32's
    assert data["timed_rechecks"] == 10  # every timed call is judged
    assert data["own_kernel_share"] is not None and data["own_kernel_share"] > 0.9


async def test_a_strict_fp32_gemm_is_priced_at_the_fp32_peak(client: Client) -> None:
    data = await _call(client, "profile", candidate=CANDIDATES["strict"], trials=1, reps=5, warmup=1, baselines=["eager"])

    assert data["state"] == "correct", data
    assert data["precision"] == "strict"
    assert data["roofline"]["peak_flops"] < 100e12
    assert [s["precision"] for s in data["speedups"]] == ["strict"]
