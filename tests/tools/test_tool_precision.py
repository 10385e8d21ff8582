"""Precision policies over MCP: honest reduced-precision candidates, under-precision ones, labelled baselines."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp_support import ok

from kfoundry import examples

pytestmark = pytest.mark.anyio

REFERENCE = examples.source("matmul_epilogue")
SOLUTION = examples.source("matmul_epilogue", "cpp")

# Rounding by bit manipulation (invisible to a static scan): round-to-nearest-even onto
# bfloat16's 7 mantissa bits, truncation onto TF32's 10 (as tensor cores read raw fp32),
# and rounding onto a 3-bit (fp8 e4m3-like) mantissa.
_BITS = r"""
#include <cstring>
static inline float bf16r(float f) { uint32_t u; std::memcpy(&u, &f, 4); u += 0x7FFFu + ((u >> 16) & 1u); u &= 0xFFFF0000u; std::memcpy(&f, &u, 4); return f; }
static inline float tf32t(float f) { uint32_t u; std::memcpy(&u, &f, 4); u &= 0xFFFFE000u; std::memcpy(&f, &u, 4); return f; }
static inline float fp8r(float f) { uint32_t u; std::memcpy(&u, &f, 4); u += 0x7FFFFu + ((u >> 20) & 1u); u &= 0xFFF00000u; std::memcpy(&f, &u, 4); return f; }
"""
# Through the compiler's half type (visible to the static scan).
_HALF = "static inline float f16r(float f) { return (float)(_Float16)f; }\n"
_ACCUMULATE = "for (int64_t p = 0; p < k; ++p) acc += xi[p] * wj[p];"


def _candidate(accumulate: str, helpers: str = _BITS) -> str:
    """The bundled C++ solution with its inner loop replaced (and rounding helpers in front)."""
    assert _ACCUMULATE in SOLUTION
    return SOLUTION.replace("#include <cstdint>\n", "#include <cstdint>\n" + helpers, 1).replace(_ACCUMULATE, accumulate, 1)


# Inputs and weights rounded, products accumulated in fp32: what the bf16/fp16 policies allow.
BF16_HONEST = _candidate("for (int64_t p = 0; p < k; ++p) acc += bf16r(xi[p]) * bf16r(wj[p]);")
TF32_HONEST = _candidate("for (int64_t p = 0; p < k; ++p) acc += tf32t(xi[p]) * tf32t(wj[p]);")
FP16_HONEST = _candidate("for (int64_t p = 0; p < k; ++p) acc += f16r(xi[p]) * f16r(wj[p]);", helpers=_HALF)
# Below what bf16 allows: the running sum itself kept in bfloat16, or operands with an fp8-sized mantissa.
BF16_ACCUMULATOR = _candidate("for (int64_t p = 0; p < k; ++p) acc = bf16r(acc + bf16r(xi[p]) * bf16r(wj[p]));")
FP8_OPERANDS = _candidate("for (int64_t p = 0; p < k; ++p) acc += fp8r(xi[p]) * fp8r(wj[p]);")


async def _verify(client: Client, candidate: str, precision: str, trials: int = 2) -> dict:
    arguments = {"backend": "cpp", "reference": REFERENCE, "candidate": candidate, "trials": trials, "precision": precision}
    return await ok(client, "verify", arguments, within=180)


async def test_a_bf16_rounding_candidate_is_correct_under_bf16_and_reports_both_errors(client: Client) -> None:
    data = await _verify(client, BF16_HONEST, "bf16")

    assert data["state"] == "correct", data
    assert data["precision"] == "bf16"
    [check] = data["precision_checks"]
    assert check["passed"] is True
    assert 0 < check["candidate_error"] <= check["bound"]
    assert check["honest_error"] > 0
    assert check["bound"] >= 2 * check["honest_error"]


async def test_the_same_bf16_rounding_hidden_in_bit_tricks_is_a_mismatch_under_strict(client: Client) -> None:
    data = await _verify(client, BF16_HONEST, "strict")

    assert data["state"] == "mismatch", data
    assert data["mismatch"]["reason"] == "values"
    assert data["precision"] == "strict"


async def test_an_fp16_candidate_is_correct_under_fp16_and_bf16_and_a_mismatch_with_an_early_warning_under_strict(client: Client) -> None:
    fp16 = await _verify(client, FP16_HONEST, "fp16")
    bf16 = await _verify(client, FP16_HONEST, "bf16")
    strict = await _verify(client, FP16_HONEST, "strict")

    assert (fp16["state"], bf16["state"], strict["state"]) == ("correct", "correct", "mismatch"), (fp16, bf16, strict)
    assert [f for f in strict["findings"] if f["blocking"]] == []
    [finding] = [f for f in strict["findings"] if f["code"] == "precision_downcast"]
    assert "_Float16" in finding["message"]


async def test_a_tf32_truncating_candidate_is_correct_under_tf32_and_a_mismatch_under_strict(client: Client) -> None:
    tf32 = await _verify(client, TF32_HONEST, "tf32")
    strict = await _verify(client, TF32_HONEST, "strict")

    assert (tf32["state"], strict["state"]) == ("correct", "mismatch"), (tf32, strict)
    [check] = tf32["precision_checks"]
    assert check["honest_error"] > 0 and check["candidate_error"] <= check["bound"]


async def test_a_bf16_candidate_is_too_imprecise_for_the_tf32_policy(client: Client) -> None:
    data = await _verify(client, BF16_HONEST, "tf32")

    assert data["state"] == "mismatch", data
    assert data["mismatch"]["reason"] == "precision"


async def test_a_bf16_candidate_is_too_imprecise_for_the_fp16_policy(client: Client) -> None:
    data = await _verify(client, BF16_HONEST, "fp16")

    assert data["state"] == "mismatch", data
    assert data["mismatch"]["reason"] == "precision"
    assert "fp16" in data["mismatch"]["message"]


async def test_accumulating_in_bf16_is_below_the_bf16_policy_and_named_as_such(client: Client) -> None:
    data = await _verify(client, BF16_ACCUMULATOR, "bf16")

    assert data["state"] == "mismatch", data
    assert data["mismatch"]["reason"] == "precision"
    assert "lower precision than 'bf16' allows" in data["mismatch"]["message"]
    [check] = data["precision_checks"]
    assert check["passed"] is False and check["candidate_error"] > check["bound"]


async def test_fp8_sized_operands_are_below_the_bf16_policy(client: Client) -> None:
    data = await _verify(client, FP8_OPERANDS, "bf16")

    assert data["state"] == "mismatch", data
    assert data["mismatch"]["reason"] == "precision"


async def test_an_exact_fp32_candidate_passes_every_policy(client: Client) -> None:
    for precision in ("strict", "tf32", "bf16", "fp16"):
        data = await _verify(client, SOLUTION, precision)
        assert data["state"] == "correct", (precision, data)
        assert data["precision_checks"], precision


async def test_strict_reports_the_float64_oracle_error_of_the_candidate_and_the_reference(client: Client) -> None:
    data = await _verify(client, SOLUTION, "strict")

    [check] = data["precision_checks"]
    assert check["bound"] is not None and check["passed"] is True and check["candidate_error"] <= check["bound"]
    assert check["candidate_error"] < 1e-5 and check["honest_error"] < 1e-5


async def test_an_unknown_policy_is_refused_with_the_known_ones_named(client: Client) -> None:
    from mcp_support import call, error_text

    result = await call(client, "verify", {"backend": "cpp", "reference": REFERENCE, "candidate": SOLUTION, "precision": "fp4"})

    assert result.is_error
    assert "strict" in error_text(result) and "bf16" in error_text(result)


async def test_profile_under_bf16_times_baselines_under_bf16_and_strict_and_labels_them(client: Client) -> None:
    arguments = {"backend": "cpp", "reference": REFERENCE, "candidate": BF16_HONEST, "precision": "bf16",
                 "baselines": ["eager"], "reps": 6, "warmup": 1, "trials": 1}

    data = await ok(client, "profile", arguments, within=240)

    assert data["state"] == "correct", data
    assert data["precision"] == "bf16"
    labels = {(s["baseline"], s["precision"]) for s in data["speedups"]}
    assert labels == {("eager", "bf16"), ("eager", "strict")}
    same = next(s for s in data["speedups"] if s["precision"] == "bf16")
    assert same["speedup"] == data["speedup_vs_eager"]
    assert data["timed_rechecks"] == arguments["reps"]  # every timed call is judged
