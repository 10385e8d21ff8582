"""Input families beyond the problem's distribution: what each does to the inputs, and when one is dropped."""

from __future__ import annotations

import pytest
import torch

from kfoundry.schema import MismatchDetail, State
from kfoundry.verify.facts import CallCheck, RuntimeFacts
from kfoundry.verify.guardrails import Guardrails
from kfoundry.verify.stress import DEFAULT_FAMILIES, FAMILIES, default_plan, stressed
from kfoundry.verify.verdict import Trial, decide


def _rand() -> list[object]:
    torch.manual_seed(0)
    return [torch.rand(64, 64), torch.rand(64, 64), 7, torch.arange(5)]


def test_every_verify_runs_a_derived_family_first_and_a_requested_one_once() -> None:
    assert DEFAULT_FAMILIES and set(DEFAULT_FAMILIES) <= set(FAMILIES)
    assert default_plan(None) == list(DEFAULT_FAMILIES)
    assert default_plan(["large", "wide", "large"]) == [*DEFAULT_FAMILIES, "large"]


def test_the_wide_family_makes_unit_interval_inputs_signed_and_wider_with_a_scale_per_input() -> None:
    a, b, n, idx = stressed(_rand(), "wide", seed=11)
    original = _rand()

    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    assert bool((a < 0).any()) and bool((a > 0).any())
    assert float(a.abs().max()) > 1.0
    # Power-of-two factors only: every element is the original one times +-2^k, exactly.
    ratio = (a / original[0]).abs().log2()  # type: ignore[operator]
    assert torch.equal(ratio, ratio.round())
    assert n == 7 and torch.equal(idx, torch.arange(5))  # type: ignore[arg-type]


def test_the_wide_family_is_the_same_for_the_same_seed_and_differs_across_seeds() -> None:
    first = stressed(_rand(), "wide", seed=3)[0]
    again = stressed(_rand(), "wide", seed=3)[0]
    other = stressed(_rand(), "wide", seed=4)[0]

    assert torch.equal(first, again) and not torch.equal(first, other)  # type: ignore[arg-type]


def test_the_special_family_plants_nan_infinities_negative_zeros_and_subnormals_and_leaves_the_rest() -> None:
    original = _rand()[0]
    [special] = stressed([original], "special", seed=5)

    assert isinstance(special, torch.Tensor) and isinstance(original, torch.Tensor)
    assert int(torch.isnan(special).sum()) == 4 and int(torch.isposinf(special).sum()) == 4 and int(torch.isneginf(special).sum()) == 4
    assert int(((special == 0) & torch.signbit(special)).sum()) == 4
    tiny = torch.finfo(torch.float32).tiny
    assert int(((special != 0) & (special.abs() < tiny)).sum()) == 8
    assert int((special != original).sum()) == 24  # every planted position differs (NaN differs from anything)
    assert bool(torch.isfinite(original).all())  # the problem's tensor itself is left alone


@pytest.mark.parametrize("family", ["wide", "special", "signed"])
def test_integer_tensors_and_plain_values_pass_through_every_family(family: str) -> None:
    values = stressed([torch.arange(6), 2.5, "mode"], family, seed=1)

    assert torch.equal(values[0], torch.arange(6)) and values[1:] == [2.5, "mode"]  # type: ignore[arg-type]


def _trial(index: int, family: str, state: State = State.correct, **check: object) -> Trial:
    return Trial(index=index, family=family, check=CallCheck(call=index, family=family, state=state, **check), facts=RuntimeFacts())  # type: ignore[arg-type]


def test_a_family_on_which_the_reference_raises_is_dropped_with_a_warning_naming_the_error() -> None:
    trials = [_trial(0, "standard"), _trial(1, "standard"), _trial(2, "wide", State.mismatch, reference_error="RuntimeError: cholesky: not positive-definite")]

    decision = decide(trials, Guardrails(), wanted=2)

    assert decision.state is State.correct and decision.passed == 2
    [outcome] = decision.stress
    assert outcome.status == "dropped" and "cholesky" in outcome.reason
    [finding] = [f for f in decision.findings if f.code == "stress_dropped"]
    assert not finding.blocking and "'wide'" in finding.message


def test_a_family_on_which_the_reference_goes_non_finite_is_dropped_but_a_candidate_failing_it_is_a_mismatch() -> None:
    dropped = decide([_trial(0, "standard"), _trial(1, "wide", State.mismatch, reference_nonfinite=True)], Guardrails(), wanted=1)
    failed = decide([_trial(0, "standard"), _trial(1, "wide", State.mismatch)], Guardrails(), wanted=1)

    assert dropped.state is State.correct and [s.status for s in dropped.stress] == ["dropped"]
    assert failed.state is State.mismatch and [s.status for s in failed.stress] == ["checked"]
    assert not [f for f in failed.findings if f.code == "stress_dropped"]


def test_the_special_family_is_checked_even_though_the_references_outputs_hold_nan_by_design() -> None:
    lost_nan = MismatchDetail(reason="nonfinite", message="4 values have NaN/inf where the reference does not (or the reverse)")
    decision = decide([_trial(0, "standard"), _trial(1, "special", State.mismatch, reference_nonfinite=True, mismatch=lost_nan)], Guardrails(), wanted=1)

    assert decision.state is State.mismatch and [s.status for s in decision.stress] == ["checked"]
    assert decision.mismatch is not None and decision.mismatch.input_family == "special"
