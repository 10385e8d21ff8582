"""Rule-based profile analysis: the evidence first, then ONE recommendation with its expected gain.

``diagnose`` builds the digest (``digest.py``: candidate against the eager baseline kernel by kernel,
against the peak the backend, device and policy allow), asks the backend kind's rules for options
(``rules.py`` with ``gpu_rules.py`` or ``cpu_rules.py``), drops those the policy forbids or the
problem's history shows were tried without gain, and keeps the one with the largest expected gain.
Works with no model; a model that writes its own analysis is given this digest, not the raw profile.

``diagnose_text`` reads pasted profiler output (a torch.profiler table or Nsight Compute CSV), which
has no timing of the whole call and no roofline, so it classifies from counters and shares only.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from pydantic import BaseModel, Field

from kfoundry.profilers import rules
from kfoundry.profilers.advice import Action, Advice, choose
from kfoundry.profilers.breakdown import shares
from kfoundry.profilers.digest import Digest, Regime, Role, bandwidth, digest, ms, rate
from kfoundry.profilers.history import Attempt, describe, tried_in_vain
from kfoundry.profilers.libraries import looks_own
from kfoundry.profilers.textparse import kernel_counters, parse_ncu_csv, parse_profiler_table
from kfoundry.schema import Bottleneck, KernelCounters, KernelShare, ProfileResult, State


class Host(BaseModel):
    """The CPU a CPU backend ran on: what threads and vectors could still add."""

    cores: int
    vector_lanes: int = Field(description="fp32 lanes of the widest vector unit: 16 (AVX-512), 8 (AVX2), 4 (SSE/NEON).")


@cache
def this_host() -> Host:
    """This machine (the server profiles CPU candidates where it runs)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    words = set(flags.split())
    lanes = 16 if "avx512f" in words else 8 if "avx2" in words or "avx" in words else 4
    return Host(cores=cores, vector_lanes=lanes)


class Diagnosis(BaseModel):
    bottleneck: Bottleneck
    digest: str = Field(description="Compact multi-line summary of the measurements.")
    recommendation: str = Field(description="The ONE change most likely to pay off next, with numbers.")
    evidence: list[str] = Field(default_factory=list, description="Short measured facts behind it.")
    advice: Advice | None = Field(default=None, description="The chosen action, its expected gain and what was weighed.")
    facts: Digest | None = Field(default=None, description="The digest as data.")


def diagnose(
    profile: ProfileResult, candidate_source: str | None = None, *, history: list[Attempt] | None = None, host: Host | None = None
) -> Diagnosis:
    """Classify a profile's bottleneck and recommend one concrete change, with the evidence for it.

    ``history`` is this problem's earlier attempts, oldest first, ending with this one (``history.attempts``);
    ``host`` the CPU a CPU backend ran on (default: this machine).
    """
    history = history or []
    cpu = host or this_host()
    d = digest(profile, host_cores=cpu.cores, vector_lanes=cpu.vector_lanes, history=describe(history))
    source = candidate_source or ""
    advice = choose(d, rules.options(d, source), tried_in_vain(history), rules.stop(d))
    text = d.render() + f"\nrecommendation [{advice.action.value}]" + (
        f": expected ~{ms(advice.expected_gain_ms)} saved" if advice.expected_gain_ms else ""
    )
    return Diagnosis(
        bottleneck=advice.bottleneck, digest=text, recommendation=advice.text, evidence=_evidence(d, advice),
        advice=advice, facts=d,
    )


def _evidence(d: Digest, advice: Advice) -> list[str]:
    ev: list[str] = []
    c, b = d.candidate, d.baseline
    if c.median_ms is not None:
        ev.append(f"candidate median {ms(c.median_ms)}" + (f" (CoV {d.cov:.2f})" if d.cov is not None else ""))
        if d.cov is not None and d.cov > 0.10:
            ev.append(f"timings are noisy (CoV {d.cov:.2f}); differences under ~{d.cov:.0%} are not meaningful")
    if b is not None and b.median_ms and c.median_ms:
        ev.append(f"{b.median_ms / c.median_ms:.2f}x vs eager ({ms(b.median_ms)})")
    if d.regime is not None and d.intensity is not None and d.ridge is not None:
        sol = f", {d.achieved_fraction:.0%} of speed of light ({ms(d.sol_ms)})" if d.achieved_fraction is not None and d.sol_ms else ""
        ev.append(f"arithmetic intensity {d.intensity:.3g} FLOP/B vs ridge {d.ridge:.3g} -> {d.regime.value}-bound{sol}")
    main = d.kernel(d.gap_kernel)
    if main is not None:
        held = f", {ms(d.gap_ms)} more than eager's {main.role.value} kernels" if d.gap_ms else ""
        ev.append(f"{main.name} holds the gap: {ms(main.time_ms)} per call{held}")
        if main.flop_rate is not None and d.peak:
            ev.append(f"{main.name}: {rate(main.flop_rate)}, {main.pct_of_peak:.0%} of {rate(d.peak.flops)} {d.peak.label}")
        elif main.byte_rate is not None and d.peak:
            ev.append(f"{main.name}: {bandwidth(main.byte_rate)}, {main.pct_of_peak:.0%} of {bandwidth(d.peak.bandwidth)}")
    lib = max((k for k in (b.kernels if b else []) if k.role is Role.gemm and k.flop_rate), key=lambda k: k.time_ms, default=None)
    if lib is not None and lib.flop_rate is not None:
        ev.append(f"eager's {lib.name[:60]}: {rate(lib.flop_rate)}")
    if c.outside_ms is not None and c.median_ms:
        ev.append(f"{ms(c.outside_ms)} of the call outside kernels" + (
            f" (eager: {ms(b.outside_ms)})" if b is not None and b.outside_ms is not None else ""))
    ev += [f"skipped {s}" for s in advice.skipped]
    if advice.considered:
        ev.append("also weighed: " + ", ".join(advice.considered[:4]))
    return ev


# -- pasted profiler text ----------------------------------------------------------------------------


def diagnose_text(text: str) -> Diagnosis:
    """Diagnose pasted profiler output: a torch.profiler table or Nsight Compute CSV."""
    table = parse_profiler_table(text)
    if table is not None:
        on_device = table.device is not None and any(r.self_device_us > 0 for r in table.rows)
        rows = table.rows
        if on_device:
            # Kernel rows have no CPU self time; CPU op rows repeat the time of kernels they launched.
            kernels = [r for r in rows if r.self_device_us > 0 and r.self_cpu_us == 0] or [r for r in rows if r.self_device_us > 0]
            triples = [(r.name, r.self_device_us, r.calls) for r in kernels]
        else:
            triples = [(r.name, r.self_cpu_us, r.calls) for r in rows if not r.name.startswith(("ProfilerStep", "[memory]"))]
        profile = _text_profile("cuda" if on_device else "cpu", shares(triples, calls=1, is_own=looks_own), None)
        return _from_text(profile, f"torch.profiler table ({profile.device})")
    report = parse_ncu_csv(text)
    if report is not None:
        triples = [(k, m.get("duration_us", 0.0), int(m["launches"])) for k, m in report.kernels.items()]
        profile = _text_profile("cuda", shares(triples, calls=1, is_own=looks_own), kernel_counters(report))
        return _from_text(profile, "Nsight Compute CSV")
    return Diagnosis(
        bottleneck=Bottleneck.unknown,
        digest=f"unrecognised profiler text ({len(text)} chars)",
        recommendation=(
            "Paste torch.profiler output from prof.key_averages().table() or Nsight Compute CSV from "
            "`ncu --csv --page details` (or `--page raw`); this text matched neither format."
        ),
    )


def _text_profile(device: str, breakdown: list[KernelShare], counters: list[KernelCounters] | None) -> ProfileResult:
    return ProfileResult(
        state=State.correct, backend="text", device=device, breakdown=breakdown, counters=counters or [],
        counters_status="collected" if counters else "not requested", duration_s=0.0, run_id="text",
    )


def _from_text(profile: ProfileResult, title: str) -> Diagnosis:
    d = digest(profile)
    d.title = title
    bottleneck, action, recommendation = _counter_rule(profile.counters) or _share_rule(d)
    evidence = [f"{k.name[:60]}: {k.share:.0%} of {'kernel' if d.kind == 'gpu' else 'op'} time, {k.calls} calls"
                for k in d.candidate.kernels[:3]]
    evidence += [_counter_fact(k) for k in profile.counters[:3] if _counter_fact(k)]
    advice = Advice(action=action, bottleneck=bottleneck, text=recommendation)
    return Diagnosis(bottleneck=bottleneck, digest=d.render() + f"\nrecommendation [{action.value}]", recommendation=recommendation,
                     evidence=evidence, advice=advice, facts=d)


def _counter_fact(k: KernelCounters) -> str:
    dram = k.dram_throughput_pct if k.dram_throughput_pct is not None else k.memory_throughput_pct
    facts = [f"{label} {v:.0f}%" for label, v in (("DRAM", dram), ("SM", k.sm_throughput_pct), ("occupancy", k.achieved_occupancy_pct))
             if v is not None]
    return f"{k.name[:60]}: " + ", ".join(facts) if facts else ""


def _counter_rule(counters: list[KernelCounters]) -> tuple[Bottleneck, Action, str] | None:
    """Nsight Compute's throughputs of the longest kernel: saturated memory, saturated SMs, or neither."""
    if not counters:
        return None
    top = max(counters, key=lambda k: k.duration_us or 0.0)
    dram = top.dram_throughput_pct if top.dram_throughput_pct is not None else top.memory_throughput_pct
    sm = top.sm_throughput_pct
    if dram is None and sm is None:
        return None
    name = top.name[:60]
    if dram is not None and dram >= 60 and dram >= (sm or 0):
        return Bottleneck.memory, Action.fusion, (
            f"Cut the bytes {name} moves (fuse its neighbours' passes into it, keep reused tiles on chip): DRAM throughput is "
            f"already {dram:.0f}% of peak, so a faster schedule cannot help, only less traffic."
        )
    if sm is not None and sm >= 60:
        return Bottleneck.compute, Action.main_loop, (
            f"Cut instructions per result in {name}'s main loop (matrix units through tl.dot/mma where the policy allows, "
            f"fewer index computations): SM throughput is {sm:.0f}% of peak while DRAM is {dram or 0:.0f}%."
        )
    occ = top.achieved_occupancy_pct
    occupancy = f" at {occ:.0f}% occupancy" if occ is not None else ""
    return Bottleneck.latency, Action.tile_config, (
        f"Give {name} more parallel work: DRAM {dram or 0:.0f}% and SM {sm or 0:.0f}% are both far from peak{occupancy} "
        f"(grid {top.grid_size or '?'} x block {top.block_size or '?'}), so it waits on latency; more programs or more "
        "independent elements per thread would fill the machine."
    )


def _share_rule(d: Digest) -> tuple[Bottleneck, Action, str]:
    c = d.candidate
    unit = "kernel" if d.kind == "gpu" else "op"
    if not c.kernels:
        return Bottleneck.unknown, Action.stop, (
            "Run profile with the reference problem so FLOPs, bytes and a per-kernel breakdown are available; "
            "the text alone does not show the bottleneck."
        )
    top = c.kernels[0]
    calls = c.launches
    mean = c.kernel_ms / calls if calls else 0.0
    if calls >= 8 and mean < rules.SMALL_KERNEL_MS[d.kind]:
        return Bottleneck.launch_overhead, Action.launch_count, (
            f"Fuse the {calls} {unit} calls in the trace into one or a few: they average {ms(mean)} each, so per-launch "
            "overhead and the memory round trips between them dominate."
        )
    if not top.own:
        role = "GEMM" if top.role is Role.gemm else "library"
        return Bottleneck(Regime.compute.value if top.role is Role.gemm else Regime.memory.value), Action.library, (
            f"Replace the {role} {unit} {top.name[:60]} ({top.share:.0%} of {unit} time) with your own kernel, fused with "
            f"its neighbours: it dominates the trace, and everything beside it is a separate pass over memory."
        )
    return Bottleneck.unknown, Action.stop, (
        f"Optimise {top.name[:60]}: it takes {top.share:.0%} ({ms(top.time_ms)}) of the {unit} time, more than any other; "
        "without FLOPs, bytes or counters the trace cannot say which resource limits it."
    )
