"""``verify``: run the reference and the candidate in separate workers and compare, K trials."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from kfoundry.artifacts import Run, new_run
from kfoundry.backends.base import Backend
from kfoundry.errors import BadRequest
from kfoundry.schema import ErrorDetail, Finding, State, VerifyResult
from kfoundry.server.jobs import Conversation, Ending, Report
from kfoundry.tools.runtime import Runtime, check_source, check_timeout, device_kind, probe, resolve_backend
from kfoundry.verify.compare import judge, tolerance
from kfoundry.verify.guardrails import Guardrails, check

DEFAULT_TRIALS = 5
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


def _ending_state(report: Report) -> State:
    if report.ending is Ending.failed and report.state is not None:
        return report.state
    return {Ending.timeout: State.timeout, Ending.protocol: State.rejected}.get(report.ending, State.runtime_error)


@dataclass
class Checked:
    result: VerifyResult
    candidate: Report
    reference: Report


async def run_check(
    rt: Runtime,
    run: Run,
    backend: Backend,
    reference: str,
    candidate: str,
    *,
    trials: int,
    atol: float | None,
    rtol: float | None,
    timeout_s: float,
    guardrails: Guardrails,
    profile_request: Callable[[], dict[str, Any]] | None = None,
    analyze: bool = False,
    then: Callable[[str, Report], Awaitable[None]] | None = None,
) -> Checked:
    """Verify, and when ``profile_request`` is given and the verdict is correct, time in the same worker."""
    start = time.perf_counter()
    device = device_kind(backend)
    run.write("reference.py", reference)
    run.write("candidate.py", candidate)
    base = {"backend": backend.name, "trials": trials, "device": device, "run_id": run.id}

    findings = check(candidate, backend, guardrails)
    if any(f.blocking for f in findings):
        result = VerifyResult(state=State.rejected, findings=findings, duration_s=time.perf_counter() - start, next_step=NEXT[State.rejected], **base)
        return Checked(result, Report(), Report())

    seeds = [secrets.randbits(31) for _ in range(trials)]
    init_seed = secrets.randbits(31)
    job = {"backend": backend.name, "problem": reference, "seeds": seeds, "init_seed": init_seed}
    reference_done = anyio.Event()
    verdict_box: dict[str, Any] = {}
    deadline = anyio.current_time() + timeout_s

    async with rt.slot(backend, exclusive=profile_request is not None) as device:
        base["device"] = device
        run.write("job.json", {"seeds": seeds, "init_seed": init_seed, "device": device, "trials": trials})
        ref_worker = await rt.pool.acquire(device)
        cand_worker = await rt.pool.acquire(device)

        async def stage(message: str) -> None:
            await rt.progress(0.3, message)

        async def after_trials(report: Report) -> dict[str, Any] | None:
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                await reference_done.wait()
            verdict_box["verdict"] = _decide(ref_conv.report, report, atol, rtol)
            if profile_request is None or verdict_box["verdict"][0] is not State.correct:
                return None
            await rt.progress(0.6, "timing")
            await rt.pool.quiesce(device)  # spares still starting would disturb the measurement
            report.profile_sent_at = anyio.current_time()
            return profile_request()

        ref_conv = Conversation(ref_worker, {**job, "role": "reference", "analyze": analyze})
        cand_conv = Conversation(cand_worker, {**job, "role": "candidate", "candidate": candidate}, progress=stage, after_trials=after_trials)

        async def run_reference() -> None:
            try:
                await ref_conv.run(timeout_s)
            finally:
                reference_done.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_reference)
                tg.start_soon(cand_conv.run, timeout_s)
        finally:
            await rt.pool.release(ref_worker, run.path / "reference-worker")
            await rt.pool.release(cand_worker, run.path / "candidate-worker")
        if then is not None and cand_conv.report.timing is not None:
            await then(device, cand_conv.report)  # still holding the device: e.g. hardware counters

    ref_report, cand_report = ref_conv.report, cand_conv.report
    state, passed, mismatch, extra = verdict_box.get("verdict") or _decide(ref_report, cand_report, atol, rtol)
    findings += extra
    error = cand_report.error
    if ref_report.ending is not Ending.done and state is not State.correct:
        ref_error = ref_report.error or ErrorDetail(type="ReferenceError", message="the reference did not finish")
        if cand_report.ending is Ending.done or cand_report.error is None or cand_report.ending is Ending.timeout:
            state = State.timeout if ref_report.ending is Ending.timeout else State.runtime_error
            error = ref_error.model_copy(update={"stage": f"reference: {ref_error.stage}", "message": f"the reference problem failed: {ref_error.message}"})
    sample_dtype = next((o.tensor.dtype for t in ref_report.trials for o in t.outputs if o.tensor is not None), None)
    a, r = tolerance(sample_dtype, atol, rtol) if sample_dtype is not None else (atol, rtol)
    result = VerifyResult(
        state=state, trials_passed=passed, mismatch=mismatch, findings=findings, error=error,
        diagnostics=cand_report.diagnostics, kernels=cand_report.kernels, interpreted=probe(backend.name).interpreted,
        atol=a, rtol=r, duration_s=round(time.perf_counter() - start, 4), next_step=NEXT[state], **base,
    )
    if cand_report.stdout_bytes > 0:
        result.findings.append(Finding(code="stdout", message=f"the candidate wrote {cand_report.stdout_bytes} bytes to stdout (kept in the run's logs)", blocking=False))
    return Checked(result, cand_report, ref_report)


def _decide(ref: Report, cand: Report, atol: float | None, rtol: float | None) -> tuple[State, int, Any, list[Finding]]:
    if cand.ending is not Ending.done or len(cand.trials) == 0:
        if cand.ending is Ending.done:
            return State.runtime_error, 0, None, []
        extra = [Finding(code="protocol", message=cand.error.message)] if cand.ending is Ending.protocol and cand.error else []
        return _ending_state(cand), len(cand.trials), None, extra
    if ref.ending is not Ending.done or len(ref.trials) != len(cand.trials):
        return State.runtime_error, 0, None, []
    findings: list[Finding] = []
    for mine, theirs in zip(cand.trials, ref.trials, strict=True):
        if mine.input_digest != theirs.input_digest:
            findings.append(Finding(code="inputs_differ", message=f"trial {mine.index}: the candidate's process produced different inputs than the reference's (get_inputs or the RNG was tampered with)"))
            return State.rejected, 0, None, findings
        if mine.input_digest_after != mine.input_digest:
            findings.append(Finding(code="input_mutation", message=f"trial {mine.index}: the candidate modified its input tensors in place"))
            return State.rejected, 0, None, findings
    expected = [[o.tensor for o in t.outputs] for t in ref.trials]
    got = [[(o.tensor, o.plain, o.type_name) for o in t.outputs] for t in cand.trials]
    verdict = judge(expected, got, atol, rtol)
    return verdict.state, verdict.trials_passed, verdict.mismatch, findings + verdict.findings


async def verify(
    rt: Runtime,
    backend: str,
    reference: str,
    candidate: str,
    trials: int = DEFAULT_TRIALS,
    atol: float | None = None,
    rtol: float | None = None,
    guardrails: Guardrails | None = None,
    timeout_s: float | None = None,
) -> VerifyResult:
    chosen = resolve_backend(backend)
    check_source(reference, "reference", kind="a KernelBench problem: Model, get_inputs, get_init_inputs")
    check_source(candidate, "candidate", kind="a module defining class ModelNew")
    if not (1 <= trials <= 100):
        raise BadRequest("trials must be between 1 and 100")
    for name, tol in (("atol", atol), ("rtol", rtol)):
        if tol is not None and not (0 <= tol < 1e6):
            raise BadRequest(f"{name} must be a non-negative number")
    run = new_run("verify")
    checked = await run_check(
        rt, run, chosen, reference, candidate, trials=trials, atol=atol, rtol=rtol,
        timeout_s=check_timeout(timeout_s, DEFAULT_TIMEOUT_S), guardrails=guardrails or Guardrails(),
    )
    run.write("result.json", checked.result)
    await rt.progress(1.0, checked.result.state.value)
    return checked.result
