"""``verify``: run the reference and the candidate in separate workers and compare, K trials."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import torch
from kfoundry.backends.base import Backend
from kfoundry.server.jobs import Conversation, Ending, Report
from kfoundry.tools.runtime import (
    Runtime,
    check_source,
    check_timeout,
    device_kind,
    probe,
    resolve_backend,
)
from kfoundry.verify import precision as numerics
from kfoundry.verify.compare import Oracle, judge, tolerance
from kfoundry.verify.guardrails import Guardrails, check, effective
from kfoundry.verify.stress import FAMILIES, STANDARD

from kfoundry.artifacts import Run, new_run
from kfoundry.errors import BadRequest
from kfoundry.schema import ErrorDetail, Finding, MismatchDetail, PrecisionCheck, State, StressOutcome, VerifyResult

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
class Decision:
    state: State
    passed: int
    mismatch: MismatchDetail | None = None
    findings: list[Finding] = field(default_factory=list)
    checks: list[PrecisionCheck] = field(default_factory=list)
    stress: list[StressOutcome] = field(default_factory=list)


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
    precision: numerics.Policy = numerics.STRICT,
    stress: list[str] | None = None,
    recheck_seeds: list[int] | None = None,
) -> Checked:
    """Verify, and when ``profile_request`` is given and the verdict is correct, time in the same worker.

    ``guardrails`` are the effective ones (tool arguments merged with the config file by the caller).
    """
    start = time.perf_counter()
    device = device_kind(backend)
    run.write("reference.py", reference)
    run.write("candidate.py", candidate)
    base = {"backend": backend.name, "trials": trials, "device": device, "run_id": run.id, "precision": precision.name}

    findings = check(candidate, backend, guardrails, precision=precision)
    if any(f.blocking for f in findings):
        result = VerifyResult(state=State.rejected, findings=findings, duration_s=time.perf_counter() - start, next_step=NEXT[State.rejected], **base)
        return Checked(result, Report(), Report())

    # One extra trial: the candidate's worker writes its values into the previous trial's input tensors
    # (same address, new values), so caches keyed by data_ptr or id return stale outputs.
    seeds = [secrets.randbits(31) for _ in range(trials + 1)]
    init_seed = secrets.randbits(31)
    families = [[secrets.randbits(31), f] for f in dict.fromkeys(stress or [])]
    job = {"backend": backend.name, "problem": reference, "seeds": seeds, "init_seed": init_seed, "probe": True,
           "precision": precision.name, "stress": families,
           "checks_off": [r for r in ("stale_memory", "torch_compute") if guardrails.severity(r, backend.name) == "off"]}
    checks: dict[int, dict[str, Any]] = {}
    reference_done = anyio.Event()
    verdict_box: dict[str, Any] = {}
    deadline = anyio.current_time() + timeout_s

    async with rt.slot(backend, exclusive=profile_request is not None) as device:
        base["device"] = device
        run.write("job.json", {"seeds": seeds, "init_seed": init_seed, "device": device, "trials": trials, "caller": rt.owner,
                               "precision": precision.name, "stress": families, "recheck_seeds": recheck_seeds or []})
        ref_worker = await rt.pool.acquire(device)
        cand_worker = await rt.pool.acquire(device)

        async def stage(message: str) -> None:
            await rt.progress(0.3, message)

        async def after_trials(report: Report) -> dict[str, Any] | None:
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                await reference_done.wait()
            verdict_box["verdict"] = _decide(ref_conv.report, report, atol, rtol, checks=checks, guardrails=guardrails, trials=trials, policy=precision)
            if profile_request is None or verdict_box["verdict"].state is not State.correct:
                return None
            await rt.progress(0.6, "timing")
            await rt.pool.quiesce(device)  # spares still starting would disturb the measurement
            report.profile_sent_at = anyio.current_time()
            return profile_request()

        ref_conv = Conversation(ref_worker, {**job, "role": "reference", "analyze": analyze, "recheck_seeds": recheck_seeds or []})
        cand_conv = Conversation(_Tap(cand_worker, checks), {**job, "role": "candidate", "candidate": candidate}, progress=stage, after_trials=after_trials)

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
    decision: Decision = verdict_box.get("verdict") or _decide(
        ref_report, cand_report, atol, rtol, checks=checks, guardrails=guardrails, trials=trials, policy=precision
    )
    state, passed, mismatch = decision.state, decision.passed, decision.mismatch
    findings += decision.findings
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
        atol=a, rtol=r, precision_checks=decision.checks, stress=decision.stress,
        duration_s=round(time.perf_counter() - start, 4), next_step=NEXT[state], **base,
    )
    if ref_report.oracle_error:
        result.findings.append(Finding(code="oracle", blocking=False, message=f"no float64 oracle for this problem ({ref_report.oracle_error}); "
                                       + ("judged by the dtype tolerances of the policy's type" if precision.relaxed else "oracle errors not reported")))
    if cand_report.stdout_bytes > 0:
        result.findings.append(Finding(code="stdout", message=f"the candidate wrote {cand_report.stdout_bytes} bytes to stdout (kept in the run's logs)", blocking=False))
    return Checked(result, cand_report, ref_report)


class _Tap:
    """The candidate's worker, with the runtime facts of each trial message kept aside (Conversation ignores them)."""

    def __init__(self, worker: Any, checks: dict[int, dict[str, Any]]) -> None:
        self._worker = worker
        self._checks = checks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._worker, name)

    async def recv(self) -> tuple[dict[str, Any], bytes]:
        header, blob = await self._worker.recv()
        if isinstance(header, dict) and header.get("op") == "trial" and isinstance(header.get("checks"), dict):
            try:
                self._checks[int(header["index"])] = header["checks"]
            except (KeyError, TypeError, ValueError):
                pass
        return header, blob


def _runtime_findings(index: int, facts: dict[str, Any], rules: Guardrails) -> list[Finding]:
    """The worker's runtime facts for one trial as findings (severity per the guardrails' rules)."""
    found: list[Finding | None] = []
    for alias in list(facts.get("aliases") or [])[:4]:
        found.append(rules.finding("output_alias", f"trial {index}: {str(alias)[:200]} (outputs must be fresh tensors)"))
    if int(facts.get("new_threads") or 0) > 0:
        found.append(rules.finding("thread_leak", f"trial {index}: {int(facts['new_threads'])} Python thread(s) still running after forward returned"))
    if int(facts.get("new_children") or 0) > 0:
        found.append(rules.finding("process_leak", f"trial {index}: {int(facts['new_children'])} child process(es) alive after forward returned"))
    flags = facts.get("flags_changed") or {}
    if flags:
        text = ", ".join(f"{k}: {v[0]} -> {v[1]}" if isinstance(v, list) and len(v) == 2 else str(k) for k, v in list(flags.items())[:8])
        found.append(rules.finding("numerics_flags", f"trial {index}: global numerics flags changed ({text})"))
    patched = facts.get("patched") or []
    if patched:
        found.append(rules.finding("monkeypatch_runtime", f"trial {index}: the candidate replaced {', '.join(map(str, patched[:8]))}"))
    if facts.get("poison_differs"):
        found.append(rules.finding("stale_memory", f"trial {index}: outputs differ between two runs under different allocator poison (reads uninitialised memory?): {str(facts['poison_differs'])[:300]}"))
    ops = {str(k): v for k, v in (facts.get("compute_ops") or {}).items() if str(k) not in rules.allow_torch_ops}
    if ops:
        names = ", ".join(f"aten::{k} x{v}" for k, v in sorted(ops.items())[:10])
        found.append(rules.finding("torch_compute", f"trial {index}: forward computes with PyTorch ops ({names}); the result must come from the candidate's own kernel (allow ops with guardrails.allow_torch_ops)"))
    return [f for f in found if f is not None]


def _is_constant(t: torch.Tensor) -> bool:
    if t.numel() < 2:
        return False
    flat = t.reshape(-1)
    return bool((flat == flat[0]).all()) or bool(torch.isnan(flat).all())


def _output_findings(ref: Report, cand: Report, rules: Guardrails) -> list[Finding]:
    """Constant outputs where the reference varies; outputs replayed from the previous trial."""
    found: list[Finding | None] = []
    for mine, theirs in zip(cand.trials, ref.trials, strict=True):
        for i, (g, e) in enumerate(zip(mine.outputs, theirs.outputs, strict=False)):
            if g.tensor is None or e.tensor is None or g.tensor.shape != e.tensor.shape:
                continue
            if _is_constant(g.tensor) and not _is_constant(e.tensor):
                found.append(rules.finding("constant_output", f"trial {mine.index}: output {i} is constant ({_scalar(g.tensor)}) but the reference's is not"))
                return [f for f in found if f is not None]
    for k in range(1, len(cand.trials)):
        for i, (g1, g0) in enumerate(zip(cand.trials[k].outputs, cand.trials[k - 1].outputs, strict=False)):
            e1 = ref.trials[k].outputs[i].tensor if i < len(ref.trials[k].outputs) else None
            e0 = ref.trials[k - 1].outputs[i].tensor if i < len(ref.trials[k - 1].outputs) else None
            if any(t is None for t in (g1.tensor, g0.tensor, e1, e0)):
                continue
            if _same_bytes(g1.tensor, g0.tensor) and not _same_bytes(e1, e0):
                found.append(rules.finding("replay", f"trial {k}: output {i} is byte-identical to the previous trial's although the inputs and the reference's outputs changed (cached or replayed output)"))
                return [f for f in found if f is not None]
    return [f for f in found if f is not None]


def _scalar(t: torch.Tensor) -> str:
    return str(t.reshape(-1)[0].item())


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))) if a.numel() else False


def _decide(
    ref: Report, cand: Report, atol: float | None, rtol: float | None, *,
    checks: dict[int, dict[str, Any]] | None = None, guardrails: Guardrails | None = None, trials: int | None = None,
    policy: numerics.Policy = numerics.STRICT,
) -> Decision:
    rules = guardrails or Guardrails()
    if cand.ending is not Ending.done or len(cand.trials) == 0:
        if cand.ending is Ending.done:
            return Decision(State.runtime_error, 0)
        extra = [Finding(code="protocol", message=cand.error.message)] if cand.ending is Ending.protocol and cand.error else []
        return Decision(_ending_state(cand), min(len(cand.trials), trials or len(cand.trials)), None, extra)
    if ref.ending is not Ending.done or len(ref.trials) != len(cand.trials):
        return Decision(State.runtime_error, 0)
    findings: list[Finding] = []
    for mine, theirs in zip(cand.trials, ref.trials, strict=True):
        if mine.input_digest != theirs.input_digest:
            findings.append(Finding(code="inputs_differ", message=f"trial {mine.index}: the candidate's process produced different inputs than the reference's (get_inputs or the RNG was tampered with)"))
            return Decision(State.rejected, 0, None, findings)
        if mine.input_digest_after != mine.input_digest:
            findings.append(Finding(code="input_mutation", message=f"trial {mine.index}: the candidate modified its input tensors in place"))
            return Decision(State.rejected, 0, None, findings)
    coverage: list[Finding] = []
    for index in sorted(checks or {}):
        for finding in _runtime_findings(index, (checks or {})[index], rules):
            (coverage if finding.code == "torch_compute" else findings).append(finding)
    coverage = coverage[:1]  # the first trial's is enough
    findings += _output_findings(ref, cand, rules)
    stress, dropped = _stress_outcomes(ref)
    kept = [k for k, t in enumerate(ref.trials) if t.family not in dropped]
    oracle = Oracle(policy=policy)
    for position, k in enumerate(kept):
        key = f"trial:{ref.trials[k].index}"
        if (key, "oracle") in ref.expected:
            oracle.oracle[position] = [o.tensor for o in ref.expected[(key, "oracle")]]
        if (key, "honest") in ref.expected:
            oracle.honest[position] = [o.tensor for o in ref.expected[(key, "honest")]]
    expected = [[o.tensor for o in ref.trials[k].outputs] for k in kept]
    got = [[(o.tensor, o.plain, o.type_name) for o in cand.trials[k].outputs] for k in kept]
    verdict = judge(expected, got, atol, rtol, oracle)
    for c in verdict.checks:
        c.trial = ref.trials[kept[c.trial]].index
    if verdict.mismatch is not None and verdict.mismatch.trial < len(kept):
        trial = ref.trials[kept[verdict.mismatch.trial]]
        verdict.mismatch.trial, verdict.mismatch.input_family = trial.index, trial.family
    standard = sum(1 for k in kept if ref.trials[k].family == STANDARD)
    passed = min(verdict.trials_passed, trials if trials is not None else standard, standard)
    findings += verdict.findings
    decided = {"checks": verdict.checks, "stress": stress}
    if verdict.state is State.rejected or any(f.blocking for f in findings):
        return Decision(State.rejected, 0, verdict.mismatch, _unique(findings + coverage), **decided)
    if verdict.state is State.correct and any(f.blocking for f in coverage):
        return Decision(State.rejected, 0, None, _unique(findings + coverage), **decided)
    # A wrong result stays a mismatch; coverage findings ride along as warnings.
    soft = [f.model_copy(update={"blocking": False}) for f in coverage]
    return Decision(verdict.state, passed, verdict.mismatch, findings + soft, **decided)


def _stress_outcomes(ref: Report) -> tuple[list[StressOutcome], set[str]]:
    """Stress families whose reference outputs stay finite are checked; the others are dropped."""
    def finite(trial: Any) -> bool:
        return all(o.tensor is None or not o.tensor.is_floating_point() or bool(torch.isfinite(o.tensor).all()) for o in trial.outputs)

    standard_finite = all(finite(t) for t in ref.trials if t.family == STANDARD)
    outcomes: list[StressOutcome] = []
    dropped: set[str] = set()
    for family in dict.fromkeys(t.family for t in ref.trials if t.family != STANDARD):
        trials = [t for t in ref.trials if t.family == family]
        if standard_finite and not all(finite(t) for t in trials):
            dropped.add(family)
            outcomes.append(StressOutcome(family=family, status="dropped", reason="the reference's outputs go non-finite on these inputs"))
        else:
            outcomes.append(StressOutcome(family=family, status="checked"))
    return outcomes, dropped


def _unique(findings: list[Finding]) -> list[Finding]:
    seen: set[str] = set()
    out: list[Finding] = []
    for f in findings:
        if f.code in seen and f.blocking:
            continue
        seen.add(f.code)
        out.append(f)
    return out


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
    precision: str = "strict",
    stress: list[str] | None = None,
) -> VerifyResult:
    chosen = resolve_backend(backend)
    check_source(reference, "reference", kind="a KernelBench problem: Model, get_inputs, get_init_inputs")
    check_source(candidate, "candidate", kind="a module defining class ModelNew")
    if not (1 <= trials <= 100):
        raise BadRequest("trials must be between 1 and 100")
    for name, tol in (("atol", atol), ("rtol", rtol)):
        if tol is not None and not (0 <= tol < 1e6):
            raise BadRequest(f"{name} must be a non-negative number")
    policy = parse_precision(precision)
    families = parse_stress(stress)
    run = new_run("verify")
    checked = await run_check(
        rt, run, chosen, reference, candidate, trials=trials, atol=atol, rtol=rtol,
        timeout_s=check_timeout(timeout_s, DEFAULT_TIMEOUT_S), guardrails=effective(guardrails, chosen.name),
        precision=policy, stress=families,
    )
    run.write("result.json", checked.result)
    await rt.progress(1.0, checked.result.state.value)
    return checked.result


def parse_precision(name: str | None) -> numerics.Policy:
    try:
        return numerics.policy(name)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc


def parse_stress(families: list[str] | None) -> list[str]:
    unknown = [f for f in families or [] if f not in FAMILIES]
    if unknown:
        raise BadRequest(f"unknown stress famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; known: {', '.join(FAMILIES)}")
    return list(dict.fromkeys(families or []))
