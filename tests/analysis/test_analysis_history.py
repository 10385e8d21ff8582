"""A problem's history from the artifact store: earlier attempts, the change advised after each, and what it did."""

from __future__ import annotations

import secrets

import pytest

from kfoundry.artifacts import new_run
from kfoundry.profilers.advice import Action, Advice
from kfoundry.profilers.analysis import Host, diagnose
from kfoundry.profilers.history import ADVICE_FILE, attempts, describe, tried_in_vain
from kfoundry.schema import AnalysisResult, Bottleneck, KernelShare, ProfileResult, Roofline, State, Timing
from kfoundry.tools.analyze import analyze_profile
from kfoundry.tools.requests import AnalyzeRequest

HOST = Host(cores=4, vector_lanes=8)
#: A dot-product loop: serial fp32 sum (scalar under -O3) and no OpenMP, so both vectorise and threads apply.
SCALAR_SERIAL = """
extern "C" void dot_rows(const float* x, const float* w, float* y, int64_t m, int64_t k) {
    for (int64_t i = 0; i < m; ++i) {
        float acc = 0.0f;
        for (int64_t p = 0; p < k; ++p) acc += x[i * k + p] * w[p];
        y[i] = acc;
    }
}
"""


def _timing(median_ms: float) -> Timing:
    return Timing(median_ms=median_ms, iqr_ms=0.01 * median_ms, min_ms=median_ms, mean_ms=median_ms, cov=0.01, n=20)


def _compute_bound(median_ms: float, run_id: str = "r") -> ProfileResult:
    flops, nbytes = 2e9, 2e7
    return ProfileResult(
        state=State.correct, backend="cpp", device="cpu", duration_s=1.0, run_id=run_id, candidate=_timing(median_ms),
        breakdown=[KernelShare(name="cpp::dot_rows", time_ms=0.98 * median_ms, share=1.0, calls=1, own=True)],
        roofline=Roofline(flops=flops, bytes=nbytes, arithmetic_intensity=flops / nbytes, peak_flops=1e11, peak_bandwidth=2e10,
                          peak_source="measured on test cpu", sol_ms=20.0, achieved_fraction=20.0 / median_ms),
    )


def _problem() -> str:
    # Each test gets its own problem, so runs other tests leave in the shared store are not its history.
    return f"# problem {secrets.token_hex(4)}\nimport torch\n"


def _profiled(reference: str, candidate: str, median_ms: float, *, backend: str = "cpp", precision: str = "strict") -> str:
    run = new_run("profile")
    run.write("reference.py", reference)
    run.write("candidate.py", candidate)
    result = _compute_bound(median_ms, run.id).model_copy(update={"backend": backend, "precision": precision})
    run.write("result.json", result)
    return run.id


def _advised(profile_run_id: str, action: Action) -> None:
    run = new_run("analyze")
    run.write("result.json", AnalysisResult(bottleneck=Bottleneck.compute, digest="", recommendation="", profile_run_id=profile_run_id, run_id=run.id))
    run.write(ADVICE_FILE, Advice(action=action, bottleneck=Bottleneck.compute, text=""))


def test_attempts_on_one_problem_come_oldest_first_with_the_change_advised_after_each() -> None:
    problem = _problem()
    first = _profiled(problem, "v1", 100.0)
    _advised(first, Action.vectorise)
    second = _profiled(problem, "v2", 40.0)

    history = attempts(second)

    assert [a.profile_run_id for a in history] == [first, second]
    assert [a.action for a in history] == [Action.vectorise, None]
    assert describe(history) == ["vectorise advised at 100.0 ms -> next attempt 40.0 ms (-60%, helped)"]


def test_other_problems_backends_and_policies_are_not_part_of_a_problems_history() -> None:
    problem = _problem()
    mine = _profiled(problem, "v1", 100.0)
    _profiled(_problem(), "v1", 90.0)
    _profiled(problem, "v1", 80.0, backend="triton")
    _profiled(problem, "v1", 70.0, precision="bf16")

    assert [a.profile_run_id for a in attempts(mine)] == [mine]


def test_attempts_after_the_one_analysed_are_not_its_history() -> None:
    problem = _problem()
    first = _profiled(problem, "v1", 100.0)
    _profiled(problem, "v2", 50.0)

    assert [a.profile_run_id for a in attempts(first)] == [first]


def test_a_change_whose_next_attempt_was_not_faster_was_tried_in_vain_and_one_that_helped_was_not() -> None:
    problem = _problem()
    first = _profiled(problem, "v1", 100.0)
    _advised(first, Action.vectorise)
    second = _profiled(problem, "v2", 99.0)  # 1% faster: within the noise, no gain
    _advised(second, Action.threads)
    third = _profiled(problem, "v3", 60.0)

    history = attempts(third)

    assert tried_in_vain(history) == {Action.vectorise}


def test_a_re_profile_of_the_same_candidate_is_not_a_try_of_the_advice() -> None:
    problem = _problem()
    first = _profiled(problem, "v1", 100.0)
    _advised(first, Action.vectorise)
    again = _profiled(problem, "v1", 100.0)

    assert tried_in_vain(attempts(again)) == {Action.vectorise}


def test_the_rules_recommend_the_largest_gain_and_skip_a_change_tried_in_vain_for_the_next() -> None:
    problem = _problem()
    first = _profiled(problem, "v1", 1000.0)
    _advised(first, Action.vectorise)
    second = _profiled(problem, "v2", 1000.0)

    fresh = diagnose(_compute_bound(1000.0), SCALAR_SERIAL, host=HOST)
    after = diagnose(_compute_bound(1000.0), SCALAR_SERIAL, host=HOST, history=attempts(second))

    assert fresh.advice is not None and fresh.advice.action is Action.vectorise
    assert after.advice is not None and after.advice.action is Action.threads
    assert "skipped vectorise: tried on this problem without a gain" in after.evidence
    assert "history: vectorise advised at 1000.0 ms -> next attempt 1000.0 ms (+0%, no gain)" in after.digest


@pytest.mark.anyio
async def test_analyze_profile_reads_the_history_of_the_callers_runs_and_does_not_repeat_advice_that_did_not_pay() -> None:
    problem = _problem()
    first = _profiled(problem, "v1", 1000.0)
    # The stored profile's breakdown and roofline are those of _compute_bound, so the rules see a scalar serial loop.
    one = await analyze_profile(AnalyzeRequest(profile=first, candidate=SCALAR_SERIAL))
    second = _profiled(problem, "v2", 1000.0)

    two = await analyze_profile(AnalyzeRequest(profile=second, candidate=SCALAR_SERIAL))

    assert "Vectorise" in one.recommendation
    assert "Parallelise" in two.recommendation
    assert any("tried on this problem without a gain" in e for e in two.evidence)
