"""``profile``: verify, then time candidate, eager and torch.compile interleaved in one worker."""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

import anyio

from kfoundry.artifacts import new_run
from kfoundry.errors import BadRequest
from kfoundry.profilers.roofline import cpu_peaks, gpu_peaks, roofline
from kfoundry.profilers.timing import summarize
from kfoundry.schema import Finding, KernelCounters, KernelShare, ProfileResult, Speedup, State, Timing
from kfoundry.server.jobs import Report
from kfoundry.tools.counters import collect as collect_counters
from kfoundry.tools.recheck import kernel_coverage, recheck_timed
from kfoundry.tools.runtime import Runtime, check_source, check_timeout, resolve_backend
from kfoundry.tools.verify import NEXT as VERIFY_NEXT
from kfoundry.tools.verify import parse_precision, parse_stress, run_check
from kfoundry.verify import precision as numerics
from kfoundry.verify.guardrails import Guardrails, effective

Baseline = Literal["eager", "compile"]
DEFAULT_TIMEOUT_S = 600.0
#: timed calls of the candidate whose outputs are rechecked (chosen at random per job)
RECHECKED_CALLS = 3


def _next_step(result: ProfileResult) -> str:
    if result.state is not State.correct:
        return VERIFY_NEXT[result.state]
    return (
        "Call `analyze_profile` with this run_id for the bottleneck and the one change most likely to pay, "
        "then write the next candidate."
    )


async def profile(
    rt: Runtime,
    backend: str,
    reference: str,
    candidate: str,
    baselines: list[Baseline] | None = None,
    hardware_counters: bool = False,
    trials: int = 3,
    warmup: int = 3,
    reps: int = 20,
    atol: float | None = None,
    rtol: float | None = None,
    guardrails: Guardrails | None = None,
    timeout_s: float | None = None,
    cuda_graph: bool = False,
    precision: str = "strict",
    stress: list[str] | None = None,
) -> ProfileResult:
    chosen = resolve_backend(backend)
    check_source(reference, "reference", kind="a KernelBench problem: Model, get_inputs, get_init_inputs")
    check_source(candidate, "candidate", kind="a module defining class ModelNew")
    if not (1 <= reps <= 1000 and 0 <= warmup <= 100 and 1 <= trials <= 100):
        raise BadRequest("reps must be 1..1000, warmup 0..100 and trials 1..100")
    chosen_baselines = list(dict.fromkeys(baselines if baselines is not None else ["eager", "compile"]))
    policy = parse_precision(precision)
    families = parse_stress(stress)
    rules = effective(guardrails, chosen.name)
    run = new_run("profile")
    start = time.perf_counter()
    set_count = max(2, min(reps, 8))
    # Every timed call of the candidate gets inputs from its own seed; a secret sample of those
    # calls is rechecked against the reference's outputs for the same seeds.
    call_seeds = [secrets.randbits(31) for _ in range(reps)]
    sample = sorted(secrets.SystemRandom().sample(range(reps), min(reps, RECHECKED_CALLS)))

    def request() -> dict[str, Any]:
        return {
            "op": "profile", "warmup": warmup, "reps": reps, "baselines": chosen_baselines, "breakdown": True,
            "seeds": [secrets.randbits(31) for _ in range(set_count)], "cuda_graph": cuda_graph,
            "call_seeds": call_seeds, "sample": sample, "allow_ops": list(rules.allow_torch_ops),
        }

    counters: list[KernelCounters] = []
    status = ["not requested"]
    timeout = check_timeout(timeout_s, DEFAULT_TIMEOUT_S)

    async def after_timing(device: str, report: Report) -> None:
        if hardware_counters:
            found, status[0] = await collect_counters(rt, device, chosen, reference, candidate, timeout, run)
            counters.extend(found)

    checked = await run_check(
        rt, run, chosen, reference, candidate, trials=trials, atol=atol, rtol=rtol,
        timeout_s=timeout, guardrails=rules, profile_request=request, analyze=True, then=after_timing,
        precision=policy, stress=families, recheck_seeds=[call_seeds[r] for r in sample],
    )
    verified = checked.result
    result = ProfileResult(
        state=verified.state, backend=chosen.name, device=verified.device, verify=verified, error=verified.error,
        findings=list(verified.findings), interpreted=verified.interpreted, duration_s=0.0, run_id=run.id, precision=policy.name,
    )
    timing = checked.candidate.timing
    if verified.state is State.correct and timing is None:
        result.state = State.runtime_error if checked.candidate.error else State.timeout
        result.error = checked.candidate.error
    if timing is not None:
        await _fill(result, timing, checked.reference.analysis, policy)
        _check_clocks(result, checked.candidate)
        result.timed_rechecks, found = recheck_timed(checked.reference, checked.candidate, atol, rtol, policy, rules)
        result.findings += found
        result.own_kernel_share, found = kernel_coverage(result, rules)
        result.findings += found
        result.counters, result.counters_status = counters, status[0]
        if cuda_graph and not result.device.startswith("cuda"):
            result.warnings.append("cuda_graph ignored: CUDA-graph replay needs a GPU.")
    if any(f.blocking for f in result.findings) and result.state is State.correct:
        result.state = State.rejected
    result.duration_s = round(time.perf_counter() - start, 4)
    result.next_step = _next_step(result)
    run.write("result.json", result)
    await rt.progress(1.0, result.state.value)
    return result


def _check_clocks(result: ProfileResult, report: Report) -> None:
    """The worker's timer must agree with the server's wall clock and with CUPTI's kernel times."""
    timing = report.timing or {}
    total_ms = sum(float(x) for samples in dict(timing.get("samples", {})).values() for x in samples)
    if report.profile_sent_at is not None and report.timing_received_at is not None:
        wall_ms = (report.timing_received_at - report.profile_sent_at) * 1e3
        if total_ms > wall_ms * 1.02 + 1.0:
            result.findings.append(Finding(
                code="timer_integrity",
                message=f"the worker reported {total_ms:.1f} ms of timed calls, but only {wall_ms:.1f} ms passed on the server's clock",
            ))
    cand = result.candidate
    if cand is not None and result.device.startswith("cuda") and result.breakdown:
        kernel_ms = sum(k.time_ms for k in result.breakdown)
        if kernel_ms > 1.5 * cand.median_ms + 0.02:
            result.findings.append(Finding(
                code="cupti_disagrees",
                message=f"CUPTI saw {kernel_ms:.4g} ms of kernels per call, but the timer reported a median of {cand.median_ms:.4g} ms",
            ))


async def _fill(result: ProfileResult, timing: dict[str, Any], analysis: Any, policy: numerics.Policy) -> None:
    samples: dict[str, list[float]] = {k: [float(x) for x in v] for k, v in dict(timing.get("samples", {})).items()}
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
    result.breakdown = [KernelShare.model_validate(s) for s in timing.get("breakdown", [])][:64]
    result.baseline_breakdown = [KernelShare.model_validate(s) for s in timing.get("baseline_breakdown", [])][:64]
    result.warnings += [str(w)[:500] for w in timing.get("warnings", [])][:20]
    cand = result.candidate
    if cand is None:
        return
    if result.eager is not None:
        result.speedup_vs_eager = round(result.eager.median_ms / cand.median_ms, 4)
    if result.compiled is not None:
        result.speedup_vs_compile = round(result.compiled.median_ms / cand.median_ms, 4)
    if result.interpreted:
        result.warnings.append("Triton ran in its CPU interpreter: these timings are not representative of GPU performance.")
    if cand.cov > 0.1:
        result.warnings.append(f"Noisy timing: coefficient of variation {cand.cov:.0%}; compare medians with care.")
    if analysis is None:
        result.warnings.append("No FLOP/byte analysis of the reference: speed of light not computed.")
        return
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
