"""The trusted verdict: from the reference worker's checks and the candidate's runtime facts to a state.

Nothing here sees a tensor. The reference worker compared every call on the device and
sent a ``CallCheck``; the candidate's process reported ``RuntimeFacts`` (informative, and
only ever able to make a verdict stricter). This module weighs them under the guardrails'
severities and the precision policy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kfoundry.sampler import Attribution, Where
from kfoundry.schema import AttributionStatus, DeviceAttribution, Finding, KernelShare, MismatchDetail, PrecisionCheck, ProfileResult, State, StressOutcome
from kfoundry.verify.facts import CallCheck, RuntimeFacts
from kfoundry.verify.families import NONFINITE_BY_DESIGN, STANDARD
from kfoundry.verify.guardrails import Guardrails


@dataclass
class Trial:
    """One verification call: its position among the trials, and what both sides said about it."""

    index: int
    family: str
    check: CallCheck
    facts: RuntimeFacts


@dataclass
class Decision:
    state: State
    passed: int
    mismatch: MismatchDetail | None = None
    findings: list[Finding] = field(default_factory=list)
    checks: list[PrecisionCheck] = field(default_factory=list)
    stress: list[StressOutcome] = field(default_factory=list)


def runtime_findings(label: str, facts: RuntimeFacts, rules: Guardrails) -> list[Finding]:
    """The candidate process's facts about one call as findings (severity per the guardrails)."""
    found: list[Finding | None] = []
    for alias in facts.aliases[:4]:
        found.append(rules.finding("output_alias", f"{label}: {alias[:200]} (outputs must be fresh tensors)"))
    if facts.new_threads > 0:
        found.append(rules.finding("thread_leak", f"{label}: {facts.new_threads} Python thread(s) still running after forward returned"))
    if facts.new_children > 0:
        found.append(rules.finding("process_leak", f"{label}: {facts.new_children} child process(es) alive after forward returned"))
    if facts.flags_changed:
        text = ", ".join(f"{k}: {v[0]} -> {v[1]}" if len(v) == 2 else k for k, v in list(facts.flags_changed.items())[:8])
        found.append(rules.finding("numerics_flags", f"{label}: global numerics flags changed ({text})"))
    if facts.patched:
        found.append(rules.finding("monkeypatch_runtime", f"{label}: the candidate replaced {', '.join(facts.patched[:8])}"))
    ops = {k: v for k, v in facts.compute_ops.items() if k not in rules.allow_torch_ops}
    if ops:
        names = ", ".join(f"aten::{k} x{v}" for k, v in sorted(ops.items())[:10])
        found.append(rules.finding("torch_compute", f"{label}: forward computes with PyTorch ops ({names}); the result must come from the candidate's own kernel (allow ops with guardrails.allow_torch_ops)"))
    return [f for f in found if f is not None]


def call_findings(label: str, check: CallCheck, rules: Guardrails) -> list[Finding]:
    """What the trusted side itself saw about one call: mutated inputs, work that outlived the call."""
    found: list[Finding | None] = []
    if check.input_mutated:
        found.append(Finding(code="input_mutation", message=f"{label}: the candidate modified its input tensors in place"))
    if check.late_write:
        outputs = ", ".join(str(i) for i in check.late_write[:4])
        found.append(rules.finding("late_work", f"{label}: output {outputs} changed after forward returned, while the candidate was stopped: "
                                   "work left running past the call (a side stream, thread or process) is neither billed nor allowed"))
    return [f for f in found if f is not None]


def process_findings(label: str, leftover: int, rules: Guardrails) -> list[Finding]:
    """Processes of the candidate's worker other than itself, seen by the trusted side when it froze it."""
    if leftover <= 0:
        return []
    finding = rules.finding("process_leak", f"{label}: {leftover} process(es) started by the candidate were alive when forward returned")
    return [finding] if finding is not None else []


def _stress_outcomes(trials: list[Trial]) -> tuple[list[StressOutcome], set[str], list[Finding]]:
    """Stress families whose reference outputs stay finite are checked; the others are dropped, each with a finding.

    A family is dropped only for what the reference itself does on its inputs (non-finite
    outputs where the problem's own trials are finite, or an exception), never for the candidate.
    """
    standard_finite = all(not t.check.reference_nonfinite for t in trials if t.family == STANDARD)
    outcomes: list[StressOutcome] = []
    dropped: set[str] = set()
    findings: list[Finding] = []
    for family in dict.fromkeys(t.family for t in trials if t.family != STANDARD):
        own = [t for t in trials if t.family == family]
        raised = next((t.check.reference_error for t in own if t.check.reference_error), "")
        if raised:
            reason = f"the reference raises on these inputs ({raised[:200]})"
        elif standard_finite and family not in NONFINITE_BY_DESIGN and any(t.check.reference_nonfinite for t in own):
            reason = "the reference's outputs go non-finite on these inputs"
        else:
            outcomes.append(StressOutcome(family=family, status="checked"))
            continue
        dropped.add(family)
        outcomes.append(StressOutcome(family=family, status="dropped", reason=reason))
        findings.append(Finding(code="stress_dropped", blocking=False,
                                message=f"input family '{family}' was not checked: {reason}; the verdict rests on the other trials"))
    return outcomes, dropped, findings


def _output_findings(trials: list[Trial], rules: Guardrails) -> list[Finding]:
    """Constant outputs where the reference varies; outputs replayed from the previous trial."""
    for t in trials:
        if t.check.constant_output is not None:
            finding = rules.finding("constant_output", f"trial {t.index}: output {t.check.constant_output} is constant but the reference's is not")
            return [finding] if finding is not None else []
    for prev, cur in zip(trials, trials[1:], strict=False):
        for i, (g1, g0) in enumerate(zip(cur.check.fingerprints, prev.check.fingerprints, strict=False)):
            e1 = cur.check.expected_fingerprints[i] if i < len(cur.check.expected_fingerprints) else ""
            e0 = prev.check.expected_fingerprints[i] if i < len(prev.check.expected_fingerprints) else ""
            if g1 and g1 == g0 and e1 != e0:
                finding = rules.finding("replay", f"trial {cur.index}: output {i} is byte-identical to the previous trial's although the inputs and the reference's outputs changed (cached or replayed output)")
                return [finding] if finding is not None else []
    return []


def _unique(findings: list[Finding]) -> list[Finding]:
    seen: set[str] = set()
    out: list[Finding] = []
    for f in findings:
        if f.code in seen and f.blocking:
            continue
        seen.add(f.code)
        out.append(f)
    return out


def decide(trials: list[Trial], rules: Guardrails, *, wanted: int, leftover_processes: int = 0) -> Decision:
    """The verdict of the verification trials (all of which returned; failures to return are decided by the caller)."""
    if not trials:
        return Decision(State.runtime_error, 0)
    findings: list[Finding] = []
    coverage: list[Finding] = []
    for t in trials:
        trusted = call_findings(f"trial {t.index}", t.check, rules)
        if any(f.code == "input_mutation" for f in trusted):
            return Decision(State.rejected, 0, None, trusted[:1])
        findings += trusted
        for finding in runtime_findings(f"trial {t.index}", t.facts, rules):
            (coverage if finding.code == "torch_compute" else findings).append(finding)
    findings += process_findings("forward", leftover_processes, rules)
    coverage = coverage[:1]  # the first trial's is enough
    findings += _output_findings(trials, rules)
    stress, dropped, dropped_findings = _stress_outcomes(trials)
    findings += dropped_findings
    kept = [t for t in trials if t.family not in dropped]
    checks = worst_checks([c.model_copy(update={"trial": t.index}) for t in kept for c in t.check.precision_checks])
    decided = {"checks": checks, "stress": stress}
    passed = 0
    failed: Trial | None = None
    for t in kept:
        if t.check.state is not State.correct:
            failed = t
            break
        if t.family == STANDARD:
            passed += 1
    passed = min(passed, wanted)
    mismatch = None
    if failed is not None:
        findings += failed.check.findings
        mismatch = failed.check.mismatch
        if mismatch is not None:
            mismatch = mismatch.model_copy(update={"trial": failed.index, "input_family": failed.family})
    if (failed is not None and failed.check.state is State.rejected) or any(f.blocking for f in findings):
        return Decision(State.rejected, 0, mismatch, _unique(findings + coverage), **decided)
    if failed is None and any(f.blocking for f in coverage):
        return Decision(State.rejected, 0, None, _unique(findings + coverage), **decided)
    # A wrong result stays a mismatch; coverage findings ride along as warnings.
    soft = [f.model_copy(update={"blocking": False}) for f in coverage]
    state = State.correct if failed is None else State.mismatch
    return Decision(state, passed, mismatch, findings + soft, **decided)


def timed_findings(calls: list[tuple[str, CallCheck, RuntimeFacts]], rules: Guardrails) -> list[Finding]:
    """Every call of the timing phase (warm-ups included) was judged too: a wrong output, mutated input or late work is a finding."""
    found: list[Finding] = []
    for label, check, facts in calls:
        if check.state is not State.correct:
            why = check.mismatch.message if check.mismatch is not None else "its outputs are not plain tensors"
            finding = rules.finding(
                "timed_output",
                f"{label}: the output differs from the reference's for that call's inputs ({why[:300]}); "
                "work done while timed must produce the real result (no caching, replay or skipped calls)",
            )
            if finding is not None:
                found.append(finding)
        found += call_findings(label, check, rules)
        found += [f for f in runtime_findings(label, facts, rules) if f.code != "torch_compute" or facts.traced]
        if any(f.blocking for f in found):
            break
    return _unique(found)


def profiled_call_findings(check: CallCheck | None, rules: Guardrails) -> list[Finding]:
    """The breakdown's extra call is judged like a timed one: its shares stand only if it computed the real result."""
    if check is None:
        return []
    return timed_findings([("the per-kernel breakdown call", check, RuntimeFacts())], rules)


#: classes of code that count neither way: OpenMP team threads spinning at barriers (whoever's region it is),
#: and the C runtime (libm's exp for a kernel, or a thread woken from a syscall, sampled before it runs anything else)
CPU_NEUTRAL = (Where.openmp, Where.libc)
#: kernel time recorded by a profiler (CUPTI in the worker, Nsight Compute outside it) may exceed the candidate's reported time
#: per call by this factor and margin before the timer is disbelieved
TIMER_SLACK = 1.5
TIMER_FLOOR_MS = 0.02
#: counted samples below which CPU attribution judges neither way
MIN_CPU_SAMPLES = 10
#: CPU time per sampled call excused as the harness's (the op profiler's start and summary, the messages):
#: about 3-11 ms measured on a busy 2-core host; without it a small problem's honest kernel reads as mostly Python
HARNESS_S = 0.015
#: a share is judged below the floor only when its upper confidence bound is (one-sided, about 99.9%):
#: the sampled calls of a small problem give a few dozen samples, and an honest kernel must not fail by chance
_Z = 3.1


def cpu_time(attribution: Attribution) -> dict[str, float]:
    """Share of all samples per class of code, most first."""
    total = attribution.samples
    ranked = sorted(attribution.by_class.items(), key=lambda kv: -kv[1])
    return {where.value: round(n / total, 4) for where, n in ranked if n} if total else {}


def cpu_share(shares: dict[str, float], rules: Guardrails) -> float | None:
    """Own (+ allowed) share of the counted CPU time (OpenMP spin and the C runtime aside), before any harness allowance."""
    counted = 1.0 - sum(shares.get(where.value, 0.0) for where in CPU_NEUTRAL)
    if counted <= 1e-9:
        return None
    credited = shares.get(Where.own.value, 0.0) + (shares.get(Where.torch.value, 0.0) if rules.allow_torch_ops else 0.0)
    return round(min(1.0, credited / counted), 4)


def _upper_bound(share: float, n: int) -> float:
    """Wilson score upper bound of a proportion seen as ``share`` of ``n``."""
    z2 = _Z * _Z
    centre = share + z2 / (2 * n)
    spread = _Z * (share * (1 - share) / n + z2 / (4 * n * n)) ** 0.5
    return (centre + spread) / (1 + z2 / n)


def cpu_coverage(attribution: Attribution | None, missing: str, rules: Guardrails, backend: str | None = None,
                 calls: int = 0) -> list[Finding]:
    """CPU: the share of forward's sampled CPU time in the candidate's own compiled code must reach the floor.

    Pure Python, numpy, torch (in any thread or process of the candidate's) and anything else count
    against it, less ``HARNESS_S`` per sampled call; torch counts as allowed when ``allow_torch_ops``
    names any op (samples cannot tell ops apart). Too few samples, a share whose confidence interval
    still reaches the floor, or no sampling at all are said without blocking: the op trace still judges.
    """
    if rules.severity("kernel_coverage", backend) == "off":
        return []
    if attribution is None:
        return [Finding(code="kernel_coverage", blocking=False, message=f"forward's CPU time was not attributed: {missing}")]
    if attribution.failure:
        return [Finding(code="kernel_coverage", blocking=False, message=f"forward's CPU time was not judged: the sampler failed: {attribution.failure}")]
    credit = {Where.own, *((Where.torch,) if rules.allow_torch_ops else ())}
    counted = sum(n for where, n in attribution.by_class.items() if where not in CPU_NEUTRAL)
    credited = sum(n for where, n in attribution.by_class.items() if where in credit)
    rate = attribution.rounds / attribution.duration_s if attribution.duration_s > 0 else 0.0
    excused = min(counted - credited, round(calls * HARNESS_S * rate))
    judged = counted - excused
    share = credited / judged if judged else 1.0
    floor = rules.min_own_kernel_share
    if share >= floor:
        return []
    if judged < MIN_CPU_SAMPLES or _upper_bound(share, judged) >= floor:
        return [Finding(code="kernel_coverage", blocking=False, message=f"forward's CPU time was not judged: {share:.0%} of {judged} "
                        f"samples in the candidate's own code (need {floor:.0%}), too few to be sure")]
    elsewhere = [o for o in attribution.objects if o.where not in credit and o.where not in CPU_NEUTRAL]
    named = ", ".join(f"{o.samples / counted:.0%} in {os.path.basename(o.path) or o.path}" for o in elsewhere[:3])
    finding = rules.finding(
        "kernel_coverage",
        f"sampling forward's processes: {share:.0%} of CPU samples in the candidate's own code (need {floor:.0%}; {excused} of {counted} "
        f"excused as the harness's); {named}. The result must be computed by the candidate's own compiled kernel, not by Python, numpy "
        "or torch (in any thread or process); allow torch with guardrails.allow_torch_ops",
        backend,
    )
    return [finding] if finding is not None else []


def kernel_coverage(result: ProfileResult, rules: Guardrails) -> tuple[float | None, list[Finding]]:
    """GPU: the share of device time in this backend's kernels (or allowed library ones) must reach the floor.

    CPU: the share verify measured by sampling (its findings are already the verification's).
    """
    if not result.device.startswith("cuda"):
        shares = result.verify.cpu_time if result.verify is not None else None
        return (cpu_share(shares, rules) if shares else None), []
    if result.interpreted:
        return None, []
    if not result.breakdown:
        # Called only once the timed calls completed; a candidate can make the profiled call raise, so nothing measured
        # fails closed, as verify's does.
        why = "; ".join(w for w in result.warnings if "breakdown" in w)[:300] or "the profiled call recorded no kernel"
        missing = rules.finding("kernel_coverage", f"where the device time goes could not be measured ({why})")
        return None, [missing] if missing is not None else []
    return device_coverage(result.breakdown, rules)


def nsight_findings(attribution: DeviceAttribution | None, rules: Guardrails, candidate_ms: float | None) -> list[Finding]:
    """Findings from the call Nsight Compute recorded outside the sandbox (``DeviceAttribution``), when it was asked for.

    Its own share is held to the same floor as the in-process one, and a record that could not
    be made, or was made but gave nothing to judge, fails closed. Its kernel time is also a
    lower bound the candidate's own timer must respect.
    """
    if attribution is None:
        return []
    if attribution.status is not AttributionStatus.measured:
        missing = rules.finding("kernel_coverage", f"Nsight Compute could not record where the device time goes ({attribution.reason})")
        return [missing] if missing is not None else []
    found: list[Finding] = []
    share = attribution.own_share or 0.0
    if share < rules.min_own_kernel_share:
        library = ", ".join(k.name[:60] for k in attribution.kernels if not (k.own or k.allowed))[:300]
        finding = rules.finding(
            "kernel_coverage",
            f"recorded by Nsight Compute outside the sandbox: only {share:.0%} of one call's kernel time is in the candidate's own "
            f"kernels (at least {rules.min_own_kernel_share:.0%} required); the rest is library or framework code ({library}). "
            "Allow specific ops with guardrails.allow_torch_ops",
        )
        found += [finding] if finding is not None else []
    if candidate_ms is not None and attribution.kernel_ms is not None and attribution.kernel_ms > TIMER_SLACK * candidate_ms + TIMER_FLOOR_MS:
        found.append(Finding(
            code="timer_integrity",
            message=f"Nsight Compute recorded {attribution.kernel_ms:.4g} ms of kernels in one call, outside the sandbox, but the "
                    f"candidate's timer reported a median of {candidate_ms:.4g} ms per call",
        ))
    return found


def device_coverage(breakdown: list[KernelShare], rules: Guardrails) -> tuple[float | None, list[Finding]]:
    """The share of one profiled call's device time in this backend's kernels (or allowed library ones), against the floor.

    Verify takes it from one extra call after its trials, profile from one after its timed
    calls: compute the op trace cannot see (torch in another thread, ATen below the dispatcher,
    a library doing the real work beside a token kernel) shows here as library kernel time.
    """
    if not breakdown:
        return None, []
    share = round(sum(k.share for k in breakdown if k.own or k.allowed), 4)
    if share >= rules.min_own_kernel_share:
        return share, []
    library = ", ".join(k.name[:60] for k in breakdown if not (k.own or k.allowed))[:300]
    finding = rules.finding(
        "kernel_coverage",
        f"only {share:.0%} of the device time is in this backend's own kernels (at least {rules.min_own_kernel_share:.0%} required); "
        f"the rest runs in library kernels ({library}). Allow specific ops with guardrails.allow_torch_ops",
    )
    return share, [finding] if finding is not None else []


def worst_checks(checks: list[PrecisionCheck]) -> list[PrecisionCheck]:
    """Per output index, the trial with the largest error relative to the honest one."""
    worst: dict[int, PrecisionCheck] = {}
    for c in checks:
        ratio = c.candidate_error / max(c.honest_error, 1e-300)
        held = worst.get(c.output_index)
        if held is None or (not c.passed and held.passed) or ratio > held.candidate_error / max(held.honest_error, 1e-300):
            worst[c.output_index] = c
    return [worst[i] for i in sorted(worst)]
