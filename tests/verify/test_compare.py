"""The trusted comparison: tolerances by dtype, NaN/inf positions, and mismatch detail."""

from __future__ import annotations

import torch

from kfoundry.schema import State
from kfoundry.verify.compare import compare_tensor, judge


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
