"""Numerics judged by the numbers: cheats that stay inside atol, work only on the problem's own range, or drop IEEE
semantics are caught for that reason; honest candidates with legitimate tricks are correct."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from local_judge import judge_family
from mcp import Client
from mcp_support import ok
from numerics_candidates import CHEATS, CLAMP, CLAMP_OFAST_PRAGMA, HONEST, RELU, RELU_SKIPPED, SOFTMAX_8192, SOFTMAX_BF16_BITS

from kfoundry.schema import State
from kfoundry.tools.requests import StressFamily


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_a_numerics_cheat_is_a_mismatch_for_its_named_reason(name: str, tmp_path: Path) -> None:
    reference, candidate, family, reason, words = CHEATS[name]

    verdict = judge_family(reference, candidate, family, tmp_path)

    assert verdict.state is State.mismatch, verdict
    assert verdict.mismatch is not None and verdict.mismatch.reason == reason, verdict.mismatch
    assert words in verdict.mismatch.message, verdict.mismatch.message


@pytest.mark.parametrize("name", sorted(n for n, c in CHEATS.items() if c[2] != "standard"))
def test_a_cheat_caught_by_an_input_family_passes_the_problems_own_inputs(name: str, tmp_path: Path) -> None:
    reference, candidate, _, _, _ = CHEATS[name]

    assert judge_family(reference, candidate, "standard", tmp_path).state is State.correct


@pytest.mark.parametrize(("name", "family"), sorted((n, f) for n, (_, _, families) in HONEST.items() for f in families))
def test_an_honest_candidate_is_correct_under_strict_on_every_family_the_reference_survives(name: str, family: str, tmp_path: Path) -> None:
    reference, candidate, _ = HONEST[name]

    verdict = judge_family(reference, candidate, family, tmp_path)

    assert verdict.state is State.correct, verdict.mismatch
    assert verdict.checks and all(c.passed and c.bound is not None for c in verdict.checks)


def test_the_special_family_holds_a_plain_ternary_relu_to_torchs_nan_semantics(tmp_path: Path) -> None:
    # Why "special" is asked for rather than run by default: honest kernels rarely mirror every NaN rule.
    verdict = judge_family(RELU, HONEST["relu"][1], "special", tmp_path)

    assert verdict.mismatch is not None and verdict.mismatch.reason == "nonfinite"


# -- through the server ------------------------------------------------------------------------------


async def _verify(client: Client, reference: str, candidate: str, **extra: object) -> dict:
    arguments = {"backend": "cpp", "reference": reference, "candidate": candidate, "trials": 2, **extra}
    return await ok(client, "verify", arguments, within=150)


@pytest.mark.anyio
async def test_verify_under_strict_rejects_bf16_operands_hidden_in_bit_tricks_that_stay_inside_atol(client: Client) -> None:
    data = await _verify(client, SOFTMAX_8192, SOFTMAX_BF16_BITS)

    assert data["state"] == "mismatch", data
    # The trial seeds are secret: a row with a large maximum can push one output past atol too ("values");
    # otherwise the tolerances pass and only the error against the oracle catches it.
    assert data["mismatch"]["reason"] in ("precision", "values"), data["mismatch"]
    if data["mismatch"]["reason"] == "precision":
        assert "outside float32 behaviour" in data["mismatch"]["message"]
    [check] = data["precision_checks"]
    assert not check["passed"] and check["candidate_error"] > check["bound"] > check["honest_error"]


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["softmax_three_kernel_pipeline", "softmax_lazy_compile_cached_by_dtype", "scalar_output_reduction",
                                  "weights_prepacked_in_init", "softmax_ofast_pragma_with_fp32_accuracy"])
async def test_verify_under_strict_finds_an_honest_tricky_candidate_correct(client: Client, name: str) -> None:
    reference, candidate, _ = HONEST[name]

    data = await _verify(client, reference, candidate)

    assert data["state"] == "correct", data
    assert [f for f in data["findings"] if f["blocking"]] == []
    assert data["precision_checks"] and all(c["passed"] and c["bound"] is not None for c in data["precision_checks"])


_FAMILIES_SERVED = "wide" in get_args(StressFamily)


@pytest.mark.anyio
@pytest.mark.skipif(not _FAMILIES_SERVED, reason="the verify request schema does not list the wide/special families yet")
async def test_verify_by_default_catches_a_relu_skipped_on_unit_interval_inputs(client: Client) -> None:
    data = await _verify(client, RELU, RELU_SKIPPED)

    assert data["state"] == "mismatch", data
    assert data["mismatch"]["input_family"] == "wide"
    assert {s["family"]: s["status"] for s in data["stress"]}.get("wide") == "checked"


@pytest.mark.anyio
@pytest.mark.skipif(not _FAMILIES_SERVED, reason="the verify request schema does not list the wide/special families yet")
async def test_verify_with_the_special_family_catches_fast_math_dropping_nan(client: Client) -> None:
    data = await _verify(client, CLAMP, CLAMP_OFAST_PRAGMA, stress=["special"])

    assert data["state"] == "mismatch", data
    assert data["mismatch"]["input_family"] == "special" and data["mismatch"]["reason"] == "nonfinite"
