"""Strict judged by the numbers on the GPU: a compensated 3xTF32 GEMM + epilogue is correct under strict; plain TF32 and
bf16 operands are mismatches however they are spelled."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import Client
from precision_cases import CANDIDATES, REFERENCE

pytestmark = [pytest.mark.gpu, pytest.mark.anyio]

# bf16 operands written with integer bit masks inside the kernel: nothing for a static scan to read.
_BF16_IN_BITS = CANDIDATES["strict"].replace(
    'acc = tl.dot(a, b, acc, input_precision="ieee")',
    "a = (a.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)\n"
    "        b = (b.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)\n"
    '        acc = tl.dot(a, b, acc, input_precision="ieee")',
)


async def _call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    with anyio.fail_after(400):
        result = await client.call_tool(tool, {"backend": "triton", "reference": REFERENCE, **arguments}, read_timeout_seconds=390)
    assert not result.is_error, result.content
    return result.structured_content or {}


async def test_a_compensated_tf32x3_gemm_is_correct_under_strict_within_fp32_behaviour(client: Client) -> None:
    data = await _call(client, "verify", candidate=CANDIDATES["tf32x3"], precision="strict", trials=2)

    assert data["state"] == "correct", data
    [check] = data["precision_checks"]
    assert check["passed"] and check["candidate_error"] <= check["bound"]
    # within a few times the reference's own fp32 error, far from TF32's
    assert check["candidate_error"] < 10 * check["honest_error"]
    # spelled TF32: the static rule still warns, without blocking
    assert all(not f["blocking"] for f in data["findings"] if f["code"] == "precision_downcast")


async def test_plain_tf32_is_a_mismatch_under_strict_and_far_beyond_the_fp32_error(client: Client) -> None:
    data = await _call(client, "verify", candidate=CANDIDATES["tf32"], precision="strict", trials=1)

    assert data["state"] == "mismatch", data
    [check] = data["precision_checks"]
    assert check["candidate_error"] > 100 * check["honest_error"]


async def test_bf16_operands_hidden_in_bit_masks_are_a_mismatch_under_strict(client: Client) -> None:
    data = await _call(client, "verify", candidate=_BF16_IN_BITS, precision="strict", trials=1)

    assert data["state"] == "mismatch", data
    assert data["mismatch"]["reason"] in ("values", "precision")
    assert not [f for f in data["findings"] if f["code"] == "precision_downcast"]  # nothing spelled: the numbers alone catch it


async def test_the_tf32x3_gemm_is_faster_than_strict_eager(client: Client) -> None:
    data = await _call(client, "profile", candidate=CANDIDATES["tf32x3"], precision="strict", trials=1, reps=10, warmup=2, baselines=["eager"])

    assert data["state"] == "correct", (data.get("findings"), data.get("mismatch"))
    [eager] = [s for s in data["speedups"] if s["baseline"] == "eager"]
    assert eager["precision"] == "strict" and eager["speedup"] > 1.0


async def test_an_nvrtc_build_records_the_fast_math_options_it_was_given_and_warns() -> None:
    from kfoundry.backends.cuda_build import build_cuda

    source = 'extern "C" __global__ void k(float* y) { y[threadIdx.x] = 1.0f / y[threadIdx.x]; }\n'
    options = ["--" + "use_fast_math"]  # built at run time: the source's text never spells it

    fast = build_cuda(source, options)
    plain = build_cuda(source + "// plain\n")
    again = build_cuda(source, options)

    assert fast.ok and plain.ok, (fast.log, plain.log)
    assert fast.math_options == ["--use_fast_math"] and plain.math_options == []
    assert any(d.severity == "warning" and "fast-math" in d.message for d in fast.diagnostics)
    assert again.cached and again.math_options == fast.math_options and again.diagnostics
