"""``verify``: trials of the candidate against the reference, each judged on the device by the reference worker."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kfoundry.artifacts import Run, new_run
from kfoundry.backends.base import Backend
from kfoundry.runner.session import Attribute, Call, Ending, Plan, Report, Session, Side, TimingPlan
from kfoundry.schema import ErrorDetail, Finding, State, VerifyResult
from kfoundry.tools.requests import VerifyRequest
from kfoundry.tools.runtime import Runtime, device_kind, probe, recording_cancellation, resolve_backend, timeout_or_default
from kfoundry.verify import policies as numerics
from kfoundry.verify.families import STANDARD, default_plan
from kfoundry.verify.guardrails import Guardrails, check, effective
from kfoundry.verify.policies import tolerance_for
from kfoundry.verify.verdict import Decision, Trial, cpu_coverage, cpu_time, decide, device_coverage, profiled_call_findings

DEFAULT_TIMEOUT_S = 180.0

NEXT = {
    State.correct: "Correct. Call `profile` with the same arguments to time it against eager PyTorch and torch.compile.",
    State.mismatch: "Fix the numerics using the mismatch detail (first bad index, samples), then call `verify` again.",
    State.compilation_failure: "Fix the compiler errors listed in diagnostics, then call `compile` (fast) or `verify` again.",
    State.runtime_error: "Fix the error (see error.type, message and traceback_tail), then call `verify` again.",
    State.timeout: "The candidate hung or was far too slow: look for infinite loops or deadlocks, or pass a larger timeout_s.",
    State.generation_failure: "Send a full Python module that defines `class ModelNew(nn.Module)`.",
    State.rejected: "Remove what the findings name; the candidate must compute the result with its own kernel.",
}


@dataclass
class Checked:
    result: VerifyResult
    report: Report
    decision: Decision | None


def stage_fraction(message: str, timed: bool) -> float:
    """How far a job is when its session reports ``message``: trials fill 0.1 to 0.9 (to 0.4 before timing)."""
    trial = re.match(r"trial (\d+)/(\d+)", message)
    if trial:
        top = 0.4 if timed else 0.9
        return 0.1 + (top - 0.1) * (int(trial[1]) - 1) / max(int(trial[2]), 1)
    if message.startswith("timing"):
        return 0.65
    if message.startswith("per-kernel"):
        return 0.8
    return 0.1


def trials_of(calls: list[Call]) -> list[Trial]:
    return [Trial(index=i, family=c.family, check=c.check, facts=c.returned.facts) for i, c in enumerate(calls)]


def leftover(calls: list[Call]) -> int:
    return max((c.leftover_processes for c in calls), default=0)


def _ended(report: Report) -> tuple[State, ErrorDetail | None, list[Finding]]:
    """The state of a job a worker ended early, and whose fault it was."""
    error = report.error
    if report.side is Side.reference:
        ref_error = error or ErrorDetail(type="ReferenceError", message="the reference did not finish")
        state = State.timeout if report.ending is Ending.timeout else State.runtime_error
        return state, ref_error.model_copy(update={"stage": f"reference: {ref_error.stage}", "message": f"the reference problem failed: {ref_error.message}"}), []
    if report.ending is Ending.failed and report.state is not None:
        return report.state, error, []
    if report.ending is Ending.protocol:
        return State.rejected, error, [Finding(code="protocol", message=error.message if error else "the candidate broke the protocol")]
    return (State.timeout if report.ending is Ending.timeout else State.runtime_error), error, []


async def run_check(
    rt: Runtime, run: Run, backend: Backend, reference: str, candidate: str, *, trials: int, atol: float | None,
    rtol: float | None, timeout_s: float, guardrails: Guardrails, precision: numerics.Policy = numerics.STRICT,
    stress: list[str] | None = None, timing: TimingPlan | None = None, analyze: bool = False,
    then: Callable[[str, Report], Awaitable[None]] | None = None,
) -> Checked:
    """Verify and, when ``timing`` is given and the trials are correct, time in the same workers.

    ``guardrails`` are the effective ones (tool arguments merged with the config file by the caller).
    A cancelled check leaves a record in ``run`` (``runtime.recording_cancellation``).
    """
    with recording_cancellation(run, "profile" if timing is not None else "verify"):
        return await _check(rt, run, backend, reference, candidate, trials=trials, atol=atol, rtol=rtol, timeout_s=timeout_s,
                            guardrails=guardrails, precision=precision, stress=stress, timing=timing, analyze=analyze, then=then)


async def _check(
    rt: Runtime, run: Run, backend: Backend, reference: str, candidate: str, *, trials: int, atol: float | None,
    rtol: float | None, timeout_s: float, guardrails: Guardrails, precision: numerics.Policy, stress: list[str] | None,
    timing: TimingPlan | None, analyze: bool, then: Callable[[str, Report], Awaitable[None]] | None,
) -> Checked:
    start = time.perf_counter()
    run.write("reference.py", reference)
    run.write("candidate.py", candidate)
    base = {"backend": backend.name, "trials": trials, "device": device_kind(backend), "run_id": run.id, "precision": precision.name}

    findings = check(candidate, backend, guardrails, precision=precision)
    if any(f.blocking for f in findings):
        result = VerifyResult(state=State.rejected, findings=findings, duration_s=time.perf_counter() - start, next_step=NEXT[State.rejected], **base)
        return Checked(result, Report(), None)

    # Every trial uses the same input buffers with new values: a cache keyed by address, identity
    # or shape returns a stale output on the second trial.
    plan_trials = [(secrets.randbits(31), STANDARD) for _ in range(trials)] + [(secrets.randbits(31), f) for f in default_plan(stress)]
    decided: list[Decision] = []
    interpreted = probe(backend.name).interpreted
    measured = device_kind(backend) == "cpu" and not interpreted and guardrails.severity("kernel_coverage", backend.name) != "off"
    reports: list[Report] = []

    def attributed() -> list[Finding]:
        report = reports[0] if reports else None
        if report is None or (report.attribution is None and not report.attribution_missing):
            return []
        return cpu_coverage(report.attribution, report.attribution_missing, guardrails, backend.name, calls=report.attribution_calls)

    async def proceed(calls: list[Call]) -> bool:
        decision = decide(trials_of(calls), guardrails, wanted=trials, leftover_processes=leftover(calls))
        decided.append(decision)
        return decision.state is State.correct

    async with rt.slot(backend, exclusive=timing is not None) as device:
        base["device"] = device
        # The job's secrets, kept with the caller's run (never shown to either worker).
        run.write("job.json", {"trial_seeds": plan_trials, "device": device, "trials": trials, "caller": rt.owner, "precision": precision.name})
        ref_worker = await rt.pool.acquire(device)
        cand_worker = await rt.pool.acquire(device)

        async def stage(message: str) -> None:
            await rt.progress(stage_fraction(message, timed=timing is not None), message)

        async def quiesce() -> None:
            await rt.progress(0.6, "timing")
            await rt.pool.quiesce(device)  # spares still starting would disturb the measurement

        # Op tracing slows every PyTorch call; on a GPU the timed calls go untraced and the
        # measured kernel coverage takes over, on the CPU every call is traced.
        stale_check = guardrails.severity("stale_memory", backend.name) != "off"
        traced = 0 if guardrails.severity("torch_compute", backend.name) == "off" else (len(plan_trials) if device.startswith("cuda") else -1)
        session = Session(
            backend=backend.name, device=device, precision=precision.name, problem=reference, candidate=candidate,
            reference_worker=ref_worker, candidate_worker=cand_worker, progress=stage, atol=atol, rtol=rtol,
            cuda_graph=timing is not None and timing.cuda_graph, poison=stale_check, trace_calls=traced, scrub_calls=len(plan_trials) if stale_check else 0,
        )
        reports.append(session.report)
        # CPU: where forward's time goes is measured on extra calls after the judged ones (Triton's CPU interpreter
        # runs kernels as numpy, so an interpreted kernel would never count as the candidate's own).
        # GPU: where the device time goes is measured on one extra call (a profile measures after its timed calls).
        on_device = timing is None and device.startswith("cuda") and not interpreted and guardrails.severity("kernel_coverage", backend.name) != "off"
        plan = Plan(trials=plan_trials, oracle_trials=len(plan_trials), timing=timing, analyze=analyze,
                    proceed=proceed if timing is not None else None, before_timing=quiesce, attribute=Attribute() if measured else None,
                    breakdown=on_device, allow_ops=list(guardrails.allow_torch_ops))
        try:
            report = await session.run(plan, timeout_s)
        finally:
            await rt.pool.release(ref_worker, run.path / "reference-worker")
            await rt.pool.release(cand_worker, run.path / "candidate-worker")
        if then is not None and report.timed:
            await then(device, report)  # still holding the device: e.g. hardware counters

    decision = decided[0] if decided else None
    error: ErrorDetail | None = None
    if report.ending is Ending.done or (decision is not None and decision.state is not State.correct):
        decision = decision or decide(trials_of(report.trials), guardrails, wanted=trials, leftover_processes=leftover(report.trials))
        state = decision.state
    elif decision is not None:
        state = decision.state  # correct trials; what went wrong while timing is the profile's to report
    else:
        state, error, extra = _ended(report)
        findings += extra
        decision = decide(trials_of(report.trials), guardrails, wanted=trials) if report.trials else Decision(state, 0)
    findings += decision.findings
    coverage, share = _measured_coverage(run, report, guardrails, attributed(), due=on_device and state is State.correct)
    findings += coverage
    if state is State.correct and any(f.blocking for f in coverage):
        state, decision.passed = State.rejected, 0
    if interpreted and device_kind(backend) == "cpu" and report.trials and guardrails.severity("kernel_coverage", backend.name) != "off":
        findings.append(Finding(code="kernel_coverage", blocking=False, message="forward's CPU time was not attributed: "
                                "an interpreted kernel runs as numpy, which would never count as the candidate's own code"))
    first = report.trials[0].check if report.trials else None
    a, r = tolerance_for(first.output_dtype, atol, rtol) if first is not None and first.output_dtype else (atol, rtol)
    result = VerifyResult(
        state=state, trials_passed=decision.passed, mismatch=decision.mismatch, findings=findings,
        error=error, diagnostics=report.diagnostics, kernels=report.kernels, interpreted=interpreted,
        atol=a, rtol=r, precision_checks=decision.checks, stress=decision.stress,
        cpu_time=cpu_time(report.attribution) if report.attribution is not None else None, own_kernel_share=share,
        duration_s=round(time.perf_counter() - start, 4), next_step=NEXT[state], **base,
    )
    oracle_error = next((c.check.oracle_error for c in report.trials if c.check.oracle_error), "")
    if oracle_error:
        result.findings.append(Finding(code="oracle", blocking=False, message=f"no float64 oracle for this problem ({oracle_error}); "
                                       + ("judged by the dtype tolerances of the policy's type" if precision.relaxed else "oracle errors not reported")))
    if report.stdout_bytes > 0:
        result.findings.append(Finding(code="stdout", message=f"the candidate wrote {report.stdout_bytes} bytes to stdout (kept in the run's logs)", blocking=False))
    return Checked(result, report, decision)


def _measured_coverage(run: Run, report: Report, guardrails: Guardrails, sampled: list[Finding], *, due: bool) -> tuple[list[Finding], float | None]:
    """Where forward's time went, as findings and the device share: the CPU's sampled attribution (``sampled``), and
    when a GPU verify's breakdown was ``due`` (correct trials, no timing: a profile judges its own, taken after its
    timed calls), the extra profiled call's kernels; none at all then fails closed (a candidate can make the profiled
    call raise). Both measurements are kept with the run."""
    if report.attribution is not None or report.attribution_missing:
        run.write("attribution.json", {"calls": report.attribution_calls, "step_s": round(report.attribution_s, 4), "missing": report.attribution_missing,
                                       "sampled": report.attribution.model_dump(mode="json") if report.attribution is not None else None})
    if not due:
        return sampled, None
    if not report.breakdown:
        why = "; ".join(report.warnings) or "the profiled call recorded no kernel"
        missing = guardrails.finding("kernel_coverage", f"where the device time goes could not be measured ({why[:300]})")
        return sampled + ([missing] if missing is not None else []), None
    run.write("breakdown.json", {"kernels": [k.model_dump(mode="json") for k in report.breakdown],
                                 "check": report.breakdown_check.model_dump(mode="json") if report.breakdown_check else None})
    share, found = device_coverage(report.breakdown, guardrails)
    return sampled + found + profiled_call_findings(report.breakdown_check, guardrails), share


async def verify(rt: Runtime, request: VerifyRequest) -> VerifyResult:
    chosen = resolve_backend(request.backend)
    policy = numerics.policy(request.precision)
    run = new_run("verify")
    checked = await run_check(
        rt, run, chosen, request.reference, request.candidate, trials=request.trials, atol=request.atol, rtol=request.rtol,
        timeout_s=timeout_or_default(request.timeout_s, DEFAULT_TIMEOUT_S), guardrails=effective(request.guardrails, chosen.name),
        precision=policy, stress=list(request.stress or []),
    )
    run.write("result.json", checked.result)
    await rt.progress(1.0, checked.result.state.value)
    return checked.result
