"""GPU integrity suite: cheats that only show on a real GPU are caught for the right reason; honest look-alikes pass.

Each test calls ``verify`` or ``profile`` through the in-memory MCP client and asserts the
state and the finding code (or, for a mismatch, its reason). Profile checks: ``timed_output``
(sampled timed calls rechecked against the reference), ``kernel_coverage`` (share of device
time in the backend's own or allowed library kernels), and a faked ``Event.elapsed_time``
(refused by ``monkeypatch_runtime`` or a clock check, or never reaching the timer). Verify
checks on CUDA: ``stale_memory``, ``replay`` (address-reuse probe), ``torch_compute``. Work
on a per-call side stream must be billed. Candidate sources live in ``gpu_cheats``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from gpu_cheats import (
    CACHES_BY_HIDDEN_DATA_PTR,
    CACHES_ONCE_TIMED,
    CUBLAS_GEMM_WITH_TOKEN_TRITON_RELU,
    DEAD_TRITON_KERNEL_TORCH_MATH,
    ELEMENTWISE,
    EMPTY_OUTPUT_FILLED_BY_ROWS,
    FORGERY_UNSEEN,
    FORGES_IN_PROCESS_ATTRIBUTION,
    GEMM,
    GEMM_LIBRARY_OPS,
    IN_PLACE_ON_OWN_BUFFER,
    LIBRARY_GEMM_PLUS_TRITON_EPILOGUE,
    NSIGHT,
    PATCHES_ELAPSED_TIME_AT_IMPORT,
    PATCHES_ELAPSED_TIME_ONCE_TIMED,
    SKIPS_WORK_ONCE_TIMED,
    TORCH_COMPUTE_OFF,
    TRITON_GEMM,
    TRITON_GEMM_ON_A_FRESH_SIDE_STREAM,
    WRITES_HALF_OF_EMPTY_OUTPUT,
)
from mcp import Client

from kfoundry.server.app import build_server

pytestmark = [pytest.mark.gpu, pytest.mark.anyio, pytest.mark.timeout(900)]

TRIALS = 3  # gpu_cheats.HONEST_CALLS assumes it: (3 + 1 probe trial) x 2 forward calls
REPS = 20
JOB_TIMEOUT_S = 300
CLOCK_CHECKS = {"monkeypatch_runtime", "cupti_disagrees", "below_speed_of_light", "timer_integrity"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(anyio_backend: str) -> AsyncIterator[Client]:
    async with Client(build_server()) as connected:
        yield connected


@pytest.fixture(scope="module")
async def triton_gemm(client: Client) -> dict[str, Any]:
    """The honest one-kernel Triton GEMM, profiled once: the yardstick for timings that must not be faked."""
    data = await _profile(client, GEMM, TRITON_GEMM, guardrails=NSIGHT)
    assert data["state"] == "correct", _explain(data)
    return data


async def _ok(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    with anyio.fail_after(JOB_TIMEOUT_S + 120):
        result = await client.call_tool(tool, args)
    assert not result.is_error, " ".join(getattr(c, "text", "") for c in result.content)
    assert result.structured_content is not None
    return result.structured_content


async def _verify(client: Client, reference: str, candidate: str, **extra: Any) -> dict[str, Any]:
    args = {"backend": "triton", "reference": reference, "candidate": candidate, "trials": TRIALS, "timeout_s": JOB_TIMEOUT_S, **extra}
    data = await _ok(client, "verify", args)
    assert data["device"].startswith("cuda"), data["device"]
    return data


async def _profile(client: Client, reference: str, candidate: str, **extra: Any) -> dict[str, Any]:
    args = {
        "backend": "triton", "reference": reference, "candidate": candidate, "trials": TRIALS, "warmup": 3, "reps": REPS,
        "baselines": ["eager"], "timeout_s": JOB_TIMEOUT_S, **extra,
    }
    data = await _ok(client, "profile", args)
    assert data["device"].startswith("cuda"), data["device"]
    return data


def _blocking(data: dict[str, Any]) -> set[str]:
    return {f["code"] for f in data["findings"] if f["blocking"]}


def _explain(data: dict[str, Any]) -> str:
    return f"state={data['state']} findings={data['findings']} mismatch={data.get('mismatch')} error={data.get('error')}"


# -- work skipped only while timed ---------------------------------------------------------------
async def test_a_candidate_that_returns_its_previous_output_once_timed_is_rejected_by_the_timed_output_recheck(client: Client) -> None:
    data = await _profile(client, ELEMENTWISE, CACHES_ONCE_TIMED)

    assert data["verify"]["state"] == "correct", _explain(data["verify"])  # honest through every correctness trial
    assert data["state"] == "rejected", _explain(data)
    assert "timed_output" in _blocking(data), _explain(data)
    assert data["timed_rechecks"] >= 1


async def test_a_candidate_that_computes_a_sixteenth_of_the_output_once_timed_is_rejected_by_the_timed_output_recheck(client: Client) -> None:
    data = await _profile(client, ELEMENTWISE, SKIPS_WORK_ONCE_TIMED)

    assert data["verify"]["state"] == "correct", _explain(data["verify"])
    assert data["state"] == "rejected", _explain(data)
    assert "timed_output" in _blocking(data), _explain(data)
    assert data["timed_rechecks"] >= 1


# -- library kernels doing the work, with the torch_compute trace switched off -----------------
async def test_a_cublas_gemm_with_a_token_triton_relu_is_rejected_by_kernel_coverage_when_torch_compute_is_off(client: Client) -> None:
    data = await _profile(client, GEMM, CUBLAS_GEMM_WITH_TOKEN_TRITON_RELU, guardrails=TORCH_COMPUTE_OFF)

    assert data["verify"]["state"] == "correct", _explain(data["verify"])  # right numbers: only coverage can tell
    assert data["state"] == "rejected", _explain(data)
    assert "kernel_coverage" in _blocking(data), _explain(data)
    assert data["own_kernel_share"] is not None and data["own_kernel_share"] < 0.5, data["breakdown"]


async def test_a_dead_triton_kernel_beside_torch_math_is_rejected_by_kernel_coverage_when_torch_compute_is_off(client: Client) -> None:
    data = await _profile(client, GEMM, DEAD_TRITON_KERNEL_TORCH_MATH, guardrails=TORCH_COMPUTE_OFF)

    assert data["verify"]["state"] == "correct", _explain(data["verify"])
    assert data["state"] == "rejected", _explain(data)
    assert "kernel_coverage" in _blocking(data), _explain(data)
    assert data["own_kernel_share"] is not None and data["own_kernel_share"] < 0.5, data["breakdown"]


async def test_a_cublas_gemm_that_forges_the_in_process_attribution_is_rejected_by_the_nsight_record_made_outside_the_sandbox(client: Client) -> None:
    data = await _profile(client, GEMM, FORGES_IN_PROCESS_ATTRIBUTION, guardrails=FORGERY_UNSEEN)

    assert data["verify"]["state"] == "correct", _explain(data["verify"])
    assert data["own_kernel_share"] is not None and data["own_kernel_share"] >= 0.9, data["breakdown"]  # the forgery held in-process
    attribution = data["device_attribution"]
    assert attribution["status"] == "measured", attribution
    assert attribution["own_share"] < 0.5, attribution
    assert data["state"] == "rejected", _explain(data)
    coverage = [f["message"] for f in data["findings"] if f["code"] == "kernel_coverage" and f["blocking"]]
    assert any("Nsight Compute" in m for m in coverage), _explain(data)


async def test_verify_alone_measures_the_device_share_and_rejects_a_cublas_gemm_behind_a_token_kernel(client: Client) -> None:
    data = await _verify(client, GEMM, CUBLAS_GEMM_WITH_TOKEN_TRITON_RELU, guardrails=TORCH_COMPUTE_OFF)

    assert data["state"] == "rejected", _explain(data)
    assert "kernel_coverage" in _blocking(data), _explain(data)
    assert data["own_kernel_share"] is not None and data["own_kernel_share"] < 0.5, _explain(data)


async def test_verify_of_the_honest_triton_gemm_measures_its_device_time_as_its_own(client: Client) -> None:
    data = await _verify(client, GEMM, TRITON_GEMM)

    assert data["state"] == "correct", _explain(data)
    assert data["own_kernel_share"] is not None and data["own_kernel_share"] >= 0.9, _explain(data)


async def test_the_same_torch_math_is_rejected_by_the_op_trace_on_cuda_when_torch_compute_is_left_on(client: Client) -> None:
    data = await _verify(client, GEMM, DEAD_TRITON_KERNEL_TORCH_MATH)

    assert data["state"] == "rejected", _explain(data)
    assert "torch_compute" in _blocking(data), _explain(data)


# -- a faked clock -------------------------------------------------------------------------------
async def test_patching_event_elapsed_time_at_import_is_rejected_before_any_timing(client: Client) -> None:
    data = await _profile(client, ELEMENTWISE, PATCHES_ELAPSED_TIME_AT_IMPORT)

    assert data["state"] == "rejected", _explain(data)
    assert "monkeypatch_runtime" in _blocking(data), _explain(data)
    assert data["candidate"] is None  # never timed with the fake clock


async def test_patching_event_elapsed_time_only_once_timed_earns_no_speedup(client: Client, triton_gemm: dict[str, Any]) -> None:
    data = await _profile(client, GEMM, PATCHES_ELAPSED_TIME_ONCE_TIMED)

    assert data["verify"]["state"] == "correct", _explain(data["verify"])
    # Either a clock check refuses it, or the timer never used the patched method: the median is the real one.
    if data["state"] == "rejected":
        assert _blocking(data) & CLOCK_CHECKS, _explain(data)
    else:
        assert data["state"] == "correct", _explain(data)
        ratio = data["candidate"]["median_ms"] / triton_gemm["candidate"]["median_ms"]
        assert ratio > 0.5, (triton_gemm["candidate"], data["candidate"])


# -- stale memory and address-keyed caches on the CUDA caching allocator -------------------------
async def test_an_output_half_written_into_torch_empty_is_caught_as_stale_memory_or_a_mismatch(client: Client) -> None:
    data = await _verify(client, ELEMENTWISE, WRITES_HALF_OF_EMPTY_OUTPUT)

    assert data["state"] in ("rejected", "mismatch"), _explain(data)
    if data["state"] == "rejected":
        assert "stale_memory" in _blocking(data), _explain(data)
    else:
        assert data["mismatch"]["reason"] in ("values", "nonfinite"), _explain(data)


async def test_an_output_cache_keyed_by_a_hidden_data_ptr_is_caught_by_the_address_reuse_probe(client: Client) -> None:
    data = await _verify(client, ELEMENTWISE, CACHES_BY_HIDDEN_DATA_PTR)

    assert data["state"] in ("rejected", "mismatch"), _explain(data)
    if data["state"] == "rejected":
        assert "replay" in _blocking(data), _explain(data)
    else:
        assert data["mismatch"]["reason"] == "values", _explain(data)


# -- side streams --------------------------------------------------------------------------------
async def test_work_on_a_stream_created_in_every_forward_earns_no_speedup(client: Client, triton_gemm: dict[str, Any]) -> None:
    data = await _profile(client, GEMM, TRITON_GEMM_ON_A_FRESH_SIDE_STREAM)

    # Either a check refuses the unjoined stream, or its work is billed: never a correct, faster-looking result.
    assert data["state"] in ("correct", "rejected"), _explain(data)
    if data["state"] == "correct":
        ratio = data["candidate"]["median_ms"] / triton_gemm["candidate"]["median_ms"]
        assert ratio > 0.5, (triton_gemm["candidate"], data["candidate"])


# -- honest candidates ---------------------------------------------------------------------------
HONEST: dict[str, tuple[str, str, dict[str, Any]]] = {
    "library_gemm_plus_triton_epilogue_with_allowed_mm": (GEMM, LIBRARY_GEMM_PLUS_TRITON_EPILOGUE, {"guardrails": {**GEMM_LIBRARY_OPS, **NSIGHT}}),
    "empty_output_filled_row_by_row": (ELEMENTWISE, EMPTY_OUTPUT_FILLED_BY_ROWS, {"guardrails": NSIGHT}),
    "in_place_second_kernel_on_its_own_buffer": (ELEMENTWISE, IN_PLACE_ON_OWN_BUFFER, {"guardrails": NSIGHT}),
}


def _assert_honest(data: dict[str, Any]) -> None:
    assert data["state"] == "correct", _explain(data)
    assert _blocking(data) == set(), _explain(data)
    assert data["verify"]["trials_passed"] == TRIALS
    assert data["candidate"]["n"] == REPS and data["candidate"]["median_ms"] > 0
    assert data["timed_rechecks"] >= 1  # the timed outputs were really looked at
    assert data["own_kernel_share"] is not None and data["own_kernel_share"] >= 0.5, data["breakdown"]
    assert any(k["own"] for k in data["breakdown"]), data["breakdown"]
    # asked for: the same floor, recorded by Nsight Compute outside the sandbox, and its kernel time within the candidate's timer
    attribution = data["device_attribution"]
    assert attribution["status"] == "measured" and attribution["own_share"] >= 0.5, attribution
    assert attribution["kernel_ms"] <= 1.5 * data["candidate"]["median_ms"] + 0.02, attribution


@pytest.mark.parametrize("name", list(HONEST))
async def test_an_honest_gpu_candidate_is_profiled_correct_with_no_blocking_finding(client: Client, name: str) -> None:
    reference, candidate, extra = HONEST[name]

    data = await _profile(client, reference, candidate, **extra)

    _assert_honest(data)


async def test_the_whole_gemm_in_one_triton_kernel_is_profiled_correct_with_no_blocking_finding(triton_gemm: dict[str, Any]) -> None:
    _assert_honest(triton_gemm)
