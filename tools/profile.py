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
from kfoundry.schema import Finding, KernelShare, ProfileResult, State, Timing
from kfoundry.tools.runtime import Runtime, check_source, check_timeout, resolve_backend
from kfoundry.tools.verify import NEXT as VERIFY_NEXT
from kfoundry.tools.verify import run_check
from kfoundry.verify.guardrails import Guardrails

Baseline = Literal["eager", "compile"]
DEFAULT_TIMEOUT_S = 600.0


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
) -> ProfileResult:
    chosen = resolve_backend(backend)
    check_source(reference, "reference", kind="a KernelBench problem: Model, get_inputs, get_init_inputs")
    check_source(candidate, "candidate", kind="a module defining class ModelNew")
    if not (1 <= reps <= 1000 and 0 <= warmup <= 100 and 1 <= trials <= 100):
        raise BadRequest("reps must be 1..1000, warmup 0..100 and trials 1..100")
    chosen_baselines = list(dict.fromkeys(baselines if baselines is not None else ["eager", "compile"]))
    run = new_run("profile")
    start = time.perf_counter()
    set_count = max(2, min(reps, 8))

    def request() -> dict[str, Any]:
        return {
            "op": "profile", "warmup": warmup, "reps": reps, "baselines": chosen_baselines, "breakdown": True,
            "seeds": [secrets.randbits(31) for _ in range(set_count)],
        }

    checked = await run_check(
        rt, run, chosen, reference, candidate, trials=trials, atol=atol, rtol=rtol,
        timeout_s=check_timeout(timeout_s, DEFAULT_TIMEOUT_S), guardrails=guardrails or Guardrails(),
        profile_request=request, analyze=True,
    )
    verified = checked.result
    result = ProfileResult(
        state=verified.state, backend=chosen.name, device=verified.device, verify=verified, error=verified.error,
        findings=list(verified.findings), interpreted=verified.interpreted, duration_s=0.0, run_id=run.id,
    )
    timing = checked.candidate.timing
    if verified.state is State.correct and timing is None:
        result.state = State.runtime_error if checked.candidate.error else State.timeout
        result.error = checked.candidate.error
    if timing is not None:
        await _fill(result, timing, checked.reference.analysis, hardware_counters)
    result.duration_s = round(time.perf_counter() - start, 4)
    result.next_step = _next_step(result)
    run.write("result.json", result)
    await rt.progress(1.0, result.state.value)
    return result


async def _fill(result: ProfileResult, timing: dict[str, Any], analysis: Any, hardware_counters: bool) -> None:
    samples: dict[str, list[float]] = {k: [float(x) for x in v] for k, v in dict(timing.get("samples", {})).items()}
    summaries: dict[str, Timing] = {k: summarize(v) for k, v in samples.items() if v}
    result.candidate = summaries.get("candidate")
    result.eager = summaries.get("eager")
    result.compiled = summaries.get("compile")
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
    if hardware_counters:
        result.warnings.append("hardware_counters: unavailable: Nsight Compute counters need an NVIDIA GPU (this job ran on the CPU).")
    if analysis is None:
        result.warnings.append("No FLOP/byte analysis of the reference: speed of light not computed.")
        return
    on_gpu = result.device.startswith("cuda")
    peaks = gpu_peaks(_device_name(result.device)) if on_gpu else await anyio.to_thread.run_sync(cpu_peaks)
    if peaks is None:
        result.warnings.append("This GPU is not in the speed-of-light table; no sol_ms.")
        return
    line = roofline(analysis.flops, analysis.bytes, peaks, analysis.dtype, cand.median_ms)
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
