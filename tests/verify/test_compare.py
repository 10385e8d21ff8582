"""The trusted comparison: tolerances by dtype, NaN/inf positions, and mismatch detail."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kfoundry.schema import State
from kfoundry.verify import compare
from kfoundry.verify import precision as numerics
from kfoundry.verify.compare import Oracle, Verdict, compare_tensor, judge
from kfoundry.verify.stress import stressed


def test_values_within_fp32_tolerance_match() -> None:
    expected = torch.linspace(-1, 1, 100)
    assert compare_tensor(expected, expected + 5e-5, None, None) is None


def test_a_single_wrong_value_is_located_with_samples() -> None:
    expected = torch.zeros(4, 8)
    got = expected.clone()
    got[2, 5] = 1.0
    detail = compare_tensor(expected, got, None, None)
    assert detail is not None and detail.reason == "values"
    assert detail.first_bad_index == [2, 5]
    assert detail.max_abs_error == 1.0
    assert detail.bad_fraction == 1 / 32
    assert detail.samples[0].index == [2, 5] and detail.samples[0].got == 1.0 and detail.samples[0].expected == 0.0


def test_half_precision_gets_the_looser_default_tolerance() -> None:
    expected = torch.ones(16, dtype=torch.float16)
    assert compare_tensor(expected, expected + 0.005, None, None) is None
    detail = compare_tensor(expected.float(), expected.float() + 0.005, None, None)
    assert detail is not None and detail.atol == 1e-4


def test_explicit_tolerances_override_the_defaults() -> None:
    expected = torch.ones(16)
    assert compare_tensor(expected, expected + 0.05, 0.1, 0.0) is None
    assert compare_tensor(expected, expected + 0.05, 0.01, 0.0) is not None


def test_nan_where_the_reference_is_finite_is_a_nonfinite_mismatch() -> None:
    expected = torch.ones(10)
    got = expected.clone()
    got[3] = float("nan")
    detail = compare_tensor(expected, got, None, None)
    assert detail is not None and detail.reason == "nonfinite" and detail.first_bad_index == [3]


def test_matching_nan_and_inf_positions_are_accepted() -> None:
    expected = torch.tensor([1.0, float("nan"), float("inf"), -float("inf")])
    assert compare_tensor(expected, expected.clone(), None, None) is None
    flipped = torch.tensor([1.0, float("nan"), -float("inf"), -float("inf")])
    assert compare_tensor(expected, flipped, None, None) is not None


def test_shape_and_dtype_must_match_exactly() -> None:
    expected = torch.zeros(4, 4)
    assert compare_tensor(expected, torch.zeros(16), None, None).reason == "shape"  # type: ignore[union-attr]
    assert compare_tensor(expected, torch.zeros(4, 4, dtype=torch.float64), None, None).reason == "dtype"  # type: ignore[union-attr]


def test_integer_outputs_must_be_exact() -> None:
    expected = torch.arange(10)
    got = expected.clone()
    got[9] = 10
    detail = compare_tensor(expected, got, None, None)
    assert detail is not None and detail.first_bad_index == [9]


def test_judge_rejects_a_tensor_subclass_and_counts_passed_trials() -> None:
    t = torch.ones(3)
    ok = judge([[t], [t]], [[(t, True, "Tensor")], [(t, True, "Tensor")]], None, None)
    assert ok.state is State.correct and ok.trials_passed == 2
    bad = judge([[t], [t]], [[(t, True, "Tensor")], [(t, False, "Tensor")]], None, None)
    assert bad.state is State.rejected and bad.trials_passed == 1 and bad.findings[0].code == "output_type"


def test_judge_reports_a_wrong_number_of_outputs() -> None:
    t = torch.ones(3)
    verdict = judge([[t, t]], [[(t, True, "Tensor")]], None, None)
    assert verdict.state is State.mismatch and verdict.mismatch is not None and verdict.mismatch.reason == "count"


# -- strict judged by the numbers ---------------------------------------------------------

def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.bfloat16().float()


def _tf32(t: torch.Tensor) -> torch.Tensor:
    return (t.contiguous().view(torch.int32) & ~((1 << 13) - 1)).view(torch.float32)


def _strict(expected: torch.Tensor, got: torch.Tensor, oracle: torch.Tensor) -> Verdict:
    return judge([[expected]], [[(got, True, "Tensor")]], None, None, Oracle(oracle={0: [oracle]}))


def _softmax_rows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of 8192 logits: every output is about 1.2e-4, near atol, so the tolerances alone see nothing."""
    x = torch.randn(8, 8192, generator=torch.Generator().manual_seed(3))
    return x, torch.softmax(x, -1), torch.softmax(x.double(), -1)


def test_strict_rejects_bf16_operands_whose_error_is_inside_atol_but_far_outside_fp32_behaviour() -> None:
    x, expected, oracle = _softmax_rows()
    got = torch.softmax(_bf16(x), -1)
    assert compare_tensor(expected, got, None, None) is None  # the tolerances alone would accept it

    verdict = _strict(expected, got, oracle)

    assert verdict.state is State.mismatch and verdict.mismatch is not None
    assert verdict.mismatch.reason == "precision" and "outside float32 behaviour" in verdict.mismatch.message
    [check] = verdict.checks
    assert not check.passed and check.bound is not None and check.candidate_error > 100 * check.honest_error


def test_strict_accepts_an_fp32_computation_that_sums_in_another_order() -> None:
    x, expected, oracle = _softmax_rows()
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    # A plain left-to-right loop, as a hand-written kernel sums: several times the vectorised reference's error.
    total = torch.from_numpy(np.add.accumulate(e.numpy(), axis=1, dtype=np.float32)[:, -1:])
    got = e / total

    verdict = _strict(expected, got, oracle)

    assert verdict.state is State.correct, verdict.mismatch
    [check] = verdict.checks
    assert check.passed and check.candidate_error > check.honest_error


def test_strict_on_stress_inputs_accepts_a_plain_loop_softmax_whose_row_sum_stagnates_and_rejects_bf16_operands() -> None:
    # Seed 2 draws the largest ``wide`` shift: a few logits dominate each row and thousands of terms fall
    # below half an ulp of a left-to-right running sum, so an honest fp32 loop errs far more than the
    # vectorised reference. Measured: 1.75x the midpoint line, 0.18x one rounding to TF32.
    torch.manual_seed(2)
    [x] = stressed([torch.randn(16, 8192)], "wide", 2)
    expected, oracle = torch.softmax(x, -1), torch.softmax(x.double(), -1)
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    got = e / torch.from_numpy(np.add.accumulate(e.numpy(), axis=1, dtype=np.float32)[:, -1:])
    on_stress = Oracle(oracle={0: [oracle]}, fine=False)

    verdict = judge([[expected]], [[(got, True, "Tensor")]], None, None, on_stress)

    assert verdict.state is State.correct, verdict.mismatch
    [check] = verdict.checks
    assert check.bound is not None and check.candidate_error > 10 * check.honest_error
    assert _strict(expected, got, oracle).state is State.mismatch  # the problem's-inputs line would refuse it
    bf16 = judge([[expected]], [[(torch.softmax(_bf16(x), -1), True, "Tensor")]], None, None, on_stress)
    assert bf16.state is State.mismatch


def test_strict_accepts_a_compensated_3xtf32_gemm_and_rejects_the_plain_tf32_one() -> None:
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(64, 2048, generator=g), torch.randn(2048, 48, generator=g)
    expected, oracle = a @ b, a.double() @ b.double()
    a_hi, b_hi = _tf32(a), _tf32(b)
    a_lo, b_lo = _tf32(a - a_hi), _tf32(b - b_hi)
    compensated = a_hi @ b_hi + (a_hi @ b_lo + a_lo @ b_hi)

    assert _strict(expected, compensated, oracle).state is State.correct
    plain = _strict(expected, a_hi @ b_hi, oracle)
    assert plain.state is State.mismatch and plain.mismatch is not None and plain.mismatch.reason in ("values", "precision")


def test_strict_outside_the_tolerances_stays_a_values_mismatch_and_still_reports_the_oracle_error() -> None:
    expected = torch.linspace(-1, 1, 64)
    got = expected.clone()
    got[7] += 0.5

    verdict = _strict(expected, got, expected.double())

    assert verdict.mismatch is not None and verdict.mismatch.reason == "values" and verdict.mismatch.first_bad_index == [7]
    assert verdict.checks and not verdict.checks[0].passed


def test_strict_leaves_room_for_a_last_bit_difference_where_the_reference_is_exact() -> None:
    expected = torch.arange(1.0, 65.0) / 3
    oracle = torch.arange(1.0, 65.0, dtype=torch.float64) / 3
    got = torch.arange(1.0, 65.0) * (1 / 3)  # another rounding, at most an ulp away

    assert _strict(expected, got, oracle).state is State.correct


def test_strict_per_output_scale_judges_a_tiny_output_beside_a_large_one() -> None:
    x, small, small_oracle = _softmax_rows()
    large = x * 1000
    verdict = judge([[large, small]], [[(large.clone(), True, "Tensor"), (torch.softmax(_bf16(x), -1), True, "Tensor")]],
                    None, None, Oracle(oracle={0: [large.double(), small_oracle]}))

    assert verdict.mismatch is not None and verdict.mismatch.output_index == 1 and verdict.mismatch.reason == "precision"


def test_strict_without_an_oracle_for_the_trial_is_judged_by_the_tolerances() -> None:
    x, expected, oracle = _softmax_rows()
    verdict = judge([[expected], [expected]], [[(expected, True, "Tensor")], [(torch.softmax(_bf16(x), -1), True, "Tensor")]],
                    None, None, Oracle(oracle={0: [oracle]}))

    assert verdict.state is State.correct and verdict.trials_passed == 2


def test_a_lost_negative_zero_is_a_values_mismatch_naming_signed_zeros() -> None:
    expected = torch.tensor([-0.0, 1.0, -0.0, 2.0])
    got = torch.tensor([0.0, 1.0, -0.0, 2.0])

    verdict = _strict(expected, got, expected.double())

    assert verdict.mismatch is not None and verdict.mismatch.reason == "values" and "signed zeros" in verdict.mismatch.message


def test_a_negative_zero_where_the_reference_has_a_positive_one_is_accepted() -> None:
    expected = torch.tensor([0.0, 1.0, 0.0])  # relu written as x * (x > 0) gives -0.0 for negative x: honest
    got = torch.tensor([-0.0, 1.0, -0.0])

    assert _strict(expected, got, expected.double()).state is State.correct


def test_subnormal_outputs_flushed_to_zero_are_a_values_mismatch() -> None:
    tiny = torch.finfo(torch.float32).tiny
    expected = torch.tensor([tiny / 4, tiny / 8, -tiny / 16, tiny / 2, 1.0])
    got = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])

    verdict = _strict(expected, got, expected.double())

    assert verdict.mismatch is not None and "flushes denormals" in verdict.mismatch.message
    assert _strict(expected, expected.clone(), expected.double()).state is State.correct


def test_without_an_oracle_the_references_own_subnormals_and_negative_zeros_still_count_under_strict() -> None:
    tiny = torch.finfo(torch.float32).tiny
    expected = torch.tensor([tiny / 4, tiny / 8, -tiny / 16, tiny / 2, -0.0, 1.0])
    flushed = torch.tensor([0.0, 0.0, 0.0, 0.0, -0.0, 1.0])

    strict = judge([[expected]], [[(flushed, True, "Tensor")]], None, None)
    relaxed = judge([[expected]], [[(flushed, True, "Tensor")]], None, None, Oracle(policy=numerics.POLICIES["tf32"]))

    assert strict.mismatch is not None and "flushes denormals" in strict.mismatch.message
    assert relaxed.state is State.correct  # fast-math is within what the tf32 policy allows


def test_ieee_checks_count_across_chunks_as_over_the_whole_output(monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = torch.finfo(torch.float32).tiny
    expected = torch.tensor([tiny / 4, 1.0, tiny / 8, 2.0, -tiny / 16, 3.0, tiny / 2, 4.0])
    flushed = torch.where(expected.abs() < tiny, torch.zeros_like(expected), expected)
    monkeypatch.setattr(compare, "CHUNK", 3)

    assert compare.ieee_semantics(expected, flushed) is not None and "4 of the 4 subnormal" in str(compare.ieee_semantics(expected, flushed))
    assert compare.ieee_semantics(expected, expected.clone()) is None
