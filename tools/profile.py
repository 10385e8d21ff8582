"""``profile``: verify, then time the candidate (its own worker) against eager and torch.compile (the reference worker), call by call."""

from __future__ import annotations

import time

import anyio

from kfoundry.artifacts import new_run
from kfoundry.profilers.libraries import name_key
from kfoundry.profilers.peaks import gpu_peaks, roofline
from kfoundry.profilers.summary import summarize
from kfoundry.runner.session import Call, Ending, Report, TimingPlan
from kfoundry.schema import DeviceAttribution, ErrorDetail, Finding, KernelCounters, ProfileResult, Speedup, State, Timing
from kfoundry.tools.counters import attribute
from kfoundry.tools.counters import collect as collect_counters
from kfoundry.tools.requests import ProfileRequest
from kfoundry.tools.runtime import Runtime, resolve_backend, timeout_or_default
from kfoundry.tools.verify import NEXT as VERIFY_NEXT
from kfoundry.tools.verify import run_check
from kfoundry.verify import policies as numerics
from kfoundry.verify.guardrails import effective
from kfoundry.verify.verdict import TIMER_FLOOR_MS, TIMER_SLACK, kernel_coverage, nsight_findings, process_findings, profiled_call_findings, timed_findings

DEFAULT_TIMEOUT_S = 600.0
#: a contender whose samples vary more than this gets a warning
NOISY_COV = 0.02


def _next_step(result: ProfileResult) -> str:
    if result.state is not State.correct:
        return VERIFY_NEXT[result.state]
    return (
        "Call `analyze_profile` with this run_id for the bottleneck and the one change most likely to pay, "
        "then write the next candidate."
    )


async def profile(rt: Runtime, request: ProfileRequest) -> ProfileResult:
    chosen = resolve_backend(request.backend)
    chosen_baselines = list(dict.fromkeys(request.baselines if request.baselines is not None else ["eager", "compile"]))
    policy = numerics.policy(request.precision)
    rules = effective(request.guardrails, chosen.name)
    run = new_run("profile")
    start = time.perf_counter()
    # Reps given explicitly are kept; otherwise they are planned from the reference's own time per call.
    asked_reps = request.reps
    timing = TimingPlan(warmup=request.warmup, reps=asked_reps, baselines=chosen_baselines, breakdown=True,
                        allow_ops=list(rules.allow_torch_ops), cuda_graph=request.cuda_graph)
    counters: list[KernelCounters] = []
    status = ["not requested"]
    attributed: list[DeviceAttribution] = []
    timeout = timeout_or_default(request.timeout_s, DEFAULT_TIMEOUT_S)

    async def after_timing(device: str, report: Report) -> None:
        if request.hardware_counters:
            found, status[0] = await collect_counters(rt, device, chosen, request.reference, request.candidate, timeout, run)
            counters.extend(found)
        if device.startswith("cuda") and rules.nsight_attribution and rules.severity("kernel_coverage", chosen.name) != "off":
            # Kernels the reference launched are library work whoever launches them; allowed ones as the in-process breakdown marked them.
            library = frozenset(name_key(k.name) for k in report.baseline_breakdown)
            allowed = frozenset(name_key(k.name) for k in report.breakdown if k.allowed)
            attributed.append(await attribute(rt, device, chosen, request.reference, request.candidate, policy.name, timeout, run, library, allowed))

    checked = await run_check(
        rt, run, chosen, request.reference, request.candidate, trials=request.trials, atol=request.atol, rtol=request.rtol,
        timeout_s=timeout, guardrails=rules, timing=timing, analyze=True, then=after_timing,
        precision=policy, stress=list(request.stress or []),
    )
    verified, report = checked.result, checked.report
    result = ProfileResult(
        state=verified.state, backend=chosen.name, device=verified.device, verify=verified, error=verified.error,
        findings=list(verified.findings), interpreted=verified.interpreted, duration_s=0.0, run_id=run.id, precision=policy.name,
    )
    reps = report.timing.reps if report.timing is not None else (asked_reps or 1)
    if verified.state is State.correct and (not report.timed or len(report.timed) < reps):
        result.state = State.timeout if report.ending is Ending.timeout else State.runtime_error
        if report.ending is Ending.protocol:
            result.state = State.rejected
            result.findings.append(Finding(code="protocol", message=report.error.message if report.error else "the candidate broke the protocol"))
        result.error = report.error or ErrorDetail(type="TimingError", message="the timed calls did not complete")
    if report.timed and len(report.timed) == reps:
        samples = {"candidate": [c.returned.elapsed_ms for c in report.timed]}
        for name in report.baselines:
            samples[name] = [c.baseline_ms[name] for c in report.timed if name in c.baseline_ms]
        await _fill(result, samples, report, policy)
        _check_clocks(result, report)
        # Warm-ups look exactly like timed calls to the candidate, so they are judged the same way.
        phase = [(f"warm-up call {i + 1}", c) for i, c in enumerate(report.warmups)] + [(f"timed call {i + 1}", c) for i, c in enumerate(report.timed)]
        result.findings += timed_findings([(label, c.check, c.returned.facts) for label, c in phase], rules)
        result.findings += process_findings("timed calls", max(c.leftover_processes for _, c in phase), rules)
        result.timed_rechecks = len(report.timed)
        result.own_kernel_share, found = kernel_coverage(result, rules)
        result.findings += found + profiled_call_findings(report.breakdown_check, rules)
        result.counters, result.counters_status = counters, status[0]
        result.device_attribution = attributed[0] if attributed else None
        result.findings += nsight_findings(result.device_attribution, rules, result.candidate.median_ms if result.candidate else None)
        if result.device_attribution is not None:
            run.write("attribution.json", result.device_attribution)
        if request.cuda_graph and not result.device.startswith("cuda"):
            result.warnings.append("cuda_graph ignored: CUDA-graph replay needs a GPU.")
    if any(f.blocking for f in result.findings) and result.state is State.correct:
        result.state = State.rejected
    result.duration_s = round(time.perf_counter() - start, 4)
    result.next_step = _next_step(result)
    run.write("result.json", result)
    await rt.progress(1.0, result.state.value)
    return result


def _check_clocks(result: ProfileResult, report: Report) -> None:
    """The candidate's own timer must agree with the parent's clock, turn by turn, and with CUPTI's kernel times."""
    turns: dict[int, list[Call]] = {}
    for c in report.timed:
        turns.setdefault(c.batch if c.batch >= 0 else -1 - c.call, []).append(c)
    late = [(sum(c.returned.elapsed_ms for c in calls), calls[0].wall_ms, len(calls)) for calls in turns.values()]
    late = [t for t in late if t[0] > t[1] * 1.02 + 0.05]
    if late:
        reported, wall, n = max(late, key=lambda t: t[0] - t[1])
        result.findings.append(Finding(
            code="timer_integrity",
            message=f"{len(late)} timing turn(s) reported more time than passed on the trusted side's clock "
                    f"(e.g. {reported:.3f} ms reported for {n} call(s), {wall:.3f} ms between the request and the answer)",
        ))
    cand = result.candidate
    if cand is not None and result.device.startswith("cuda") and result.breakdown:
        kernel_ms = sum(k.time_ms for k in result.breakdown)
        if kernel_ms > TIMER_SLACK * cand.median_ms + TIMER_FLOOR_MS:
            result.findings.append(Finding(
                code="cupti_disagrees",
                message=f"CUPTI saw {kernel_ms:.4g} ms of kernels per call, but the timer reported a median of {cand.median_ms:.4g} ms",
            ))


async def _fill(result: ProfileResult, samples: dict[str, list[float]], report: Report, policy: numerics.Policy) -> None:
    analysis = report.analysis
    summaries: dict[str, Timing] = {k: summarize(v) for k, v in samples.items() if v}
    result.candidate = summaries.get("candidate")
    result.eager = summaries.get("eager")
    result.compiled = summaries.get("compile")
    if result.candidate is not None:
        for name, summary in summaries.items():
            baseline, _, other = name.partition("_")
            if baseline in ("eager", "compile"):
                result.speedups.append(Speedup(
                    baseline=baseline, precision=other or policy.name, median_ms=summary.median_ms,
                    speedup=round(summary.median_ms / result.candidate.median_ms, 4),
                ))
    result.breakdown = report.breakdown[:64]
    result.baseline_breakdown = report.baseline_breakdown[:64]
    result.warnings += [w[:500] for w in report.warnings][:20]
    cand = result.candidate
    if cand is None:
        return
    if result.eager is not None:
        result.speedup_vs_eager = round(result.eager.median_ms / cand.median_ms, 4)
    if result.compiled is not None:
        result.speedup_vs_compile = round(result.compiled.median_ms / cand.median_ms, 4)
    if result.interpreted:
        result.warnings.append("Triton ran in its CPU interpreter: these timings are not representative of GPU performance.")
    noisy = [f"{name} {t.cov:.1%}" for name, t in summaries.items() if t.cov > NOISY_COV]
    if noisy:
        result.warnings.append(f"Noisy timing (coefficient of variation over {NOISY_COV:.0%}): {', '.join(noisy)}; compare medians with care.")
    if analysis is None:
        result.warnings.append("No FLOP/byte analysis of the reference: speed of light not computed.")
        return
    from kfoundry.profilers.roofline import cpu_peaks  # measures with torch: loaded with the first CPU profile, not at start-up

    on_gpu = result.device.startswith("cuda")
    peaks = gpu_peaks(_device_name(result.device)) if on_gpu else await anyio.to_thread.run_sync(cpu_peaks)
    if peaks is None:
        result.warnings.append("This GPU is not in the speed-of-light table; no sol_ms.")
        return
    line = roofline(analysis.flops, analysis.bytes, peaks, analysis.dtype, cand.median_ms, policy=policy.peak)
    result.roofline = line
    result.sol_ms = line.sol_ms
    result.sol_fraction = line.achieved_fraction
    if line.sol_ms > cand.median_ms:
        message = f"candidate median {cand.median_ms:.4g} ms is below the speed of light {line.sol_ms:.4g} ms ({line.peak_source})"
        if on_gpu:
            result.findings.append(Finding(code="below_speed_of_light", message=message))
            result.state = State.rejected
        else:
            result.warnings.append(message + "; CPU peaks are measured, and caches can beat DRAM bandwidth for small problems.")


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(torch.device(device))
