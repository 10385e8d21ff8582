"""`profile` over MCP on the CPU: timings, speedups, roofline, per-op breakdown; only correct candidates are timed."""

from __future__ import annotations

import pytest
from candidates import CORRECT_TRITON, REFERENCE, WRONG_VALUES
from mcp import Client
from mcp_support import ok

from kfoundry import examples

pytestmark = pytest.mark.anyio

MATMUL = examples.source("matmul_epilogue")
MATMUL_CPP = examples.source("matmul_epilogue", "cpp")
M, K, N = 128, 256, 256  # batch_size, in_features, out_features in examples/matmul_epilogue/reference.py


async def test_a_correct_cpp_candidate_is_timed_against_eager_with_roofline_and_breakdown(client: Client) -> None:
    reps = 7
    arguments = {"backend": "cpp", "reference": MATMUL, "candidate": MATMUL_CPP, "baselines": ["eager"], "reps": reps, "warmup": 2, "trials": 2}

    data = await ok(client, "profile", arguments, within=240)

    assert data["state"] == "correct", data
    assert data["candidate"]["n"] == reps and data["eager"]["n"] == reps
    assert data["candidate"]["median_ms"] > 0
    assert data["compiled"] is None and data["speedup_vs_compile"] is None
    assert data["speedup_vs_eager"] == pytest.approx(data["eager"]["median_ms"] / data["candidate"]["median_ms"], rel=1e-3)
    assert data["roofline"]["flops"] == 2 * M * N * K
    assert data["roofline"]["bytes"] > 0
    own = [k for k in data["breakdown"] if k["own"]]
    assert [k["name"] for k in own] == ["cpp::linear_relu"], data["breakdown"]
    assert data["baseline_breakdown"] and not any(k["own"] for k in data["baseline_breakdown"])
    assert data["interpreted"] is False


async def test_a_mismatching_candidate_is_not_timed(client: Client) -> None:
    arguments = {"backend": "cpp", "reference": REFERENCE, "candidate": WRONG_VALUES, "baselines": ["eager"], "reps": 5}

    data = await ok(client, "profile", arguments, within=240)

    assert data["state"] == "mismatch", data
    assert data["candidate"] is None and data["eager"] is None
    assert data["verify"]["mismatch"]["reason"] == "values"


async def test_an_interpreted_triton_profile_says_its_timings_are_not_representative(client: Client) -> None:
    arguments = {"backend": "triton", "reference": REFERENCE, "candidate": CORRECT_TRITON, "baselines": ["eager"], "reps": 3, "warmup": 1, "trials": 1}

    data = await ok(client, "profile", arguments, within=300)

    assert data["state"] == "correct", data
    assert data["interpreted"] is True
    assert data["candidate"]["n"] == 3
    assert any("not representative" in w for w in data["warnings"]), data["warnings"]


@pytest.mark.slow
async def test_the_torch_compile_baseline_is_timed_when_asked_for(client: Client) -> None:
    arguments = {"backend": "cpp", "reference": MATMUL, "candidate": MATMUL_CPP, "baselines": ["compile"], "reps": 5, "warmup": 1, "trials": 1, "timeout_s": 500}

    data = await ok(client, "profile", arguments, within=520)

    assert data["state"] == "correct", data
    assert data["compiled"] is not None and data["compiled"]["n"] == 5, data["warnings"]
    assert data["speedup_vs_compile"] == pytest.approx(data["compiled"]["median_ms"] / data["candidate"]["median_ms"], rel=1e-3)
    assert data["eager"] is None
