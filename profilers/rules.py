"""Rules every backend kind shares (host work, launch count, fusion, library kernels, stopping) and the dispatch to the kind's own.

Each rule reads only the digest (and the candidate's source for what it names) and returns options
with an expected gain in milliseconds; ``advice.choose`` picks among them.
"""

from __future__ import annotations

import re

from kfoundry.profilers import cpu_rules, gpu_rules
from kfoundry.profilers.advice import WORTHWHILE, Action, Option, saving
from kfoundry.profilers.digest import Digest, Regime, Role, bandwidth, ms, rate, size
from kfoundry.schema import Bottleneck

#: Fixed cost of one call that no kernel change removes: one launch plus the timer's own overhead.
CALL_FLOOR_MS = {"gpu": 0.010, "cpu": 0.005}
#: Achievable fraction of peak bandwidth for a streaming kernel.
STREAM = {"gpu": 0.85, "cpu": 0.70}
#: Kernels shorter than this are launch-sized: their count, not their bodies, sets the time.
SMALL_KERNEL_MS = {"gpu": 0.020, "cpu": 0.100}
#: Host time beyond eager's that counts as the candidate's own host work.
HOST_MIN_MS = {"gpu": 0.020, "cpu": 0.050}
NEAR_SOL = {"gpu": 0.70, "cpu": 0.50}
#: Candidate CoV above which a stop says to measure again rather than to keep the kernel
NOISY_COV = 0.25
#: A kernel at this fraction of its peak is not what to change (the GPU stream rule stops below it too).
KERNEL_AT_PEAK = 0.60
#: Share of the call outside kernels, beyond eager's, that makes host work the finding. A CPU breakdown's
#: profiled calls differ from the timed ones by up to ~40% on a busy host, so only a larger gap is evidence there.
HOST_SHARE = {"gpu": 0.25, "cpu": 0.50}

_HOST_HABITS = (
    (re.compile(r"\.tolist\(\)|\[\s*[^]\n]*\bfor\b[^]\n]*\bin\b"), "builds Python lists"),
    (re.compile(r"torch\.(tensor|as_tensor)\("), "creates tensors from Python data"),
    (re.compile(r"\.item\(\)|\.cpu\(\)|\.numpy\(\)|synchronize\("), "synchronises with the device (.item()/.cpu())"),
    (re.compile(r"^\s+for\b.*\bin\b", re.M), "loops in Python"),
)


def options(d: Digest, source: str) -> list[Option]:
    shared = [o for o in (_host(d, source), _launches(d), _fusion(d), _library(d)) if o is not None]
    own = gpu_rules.options(d, source) if d.kind == "gpu" else cpu_rules.options(d, source)
    return shared + own


def stop(d: Digest) -> Option:
    """The answer when no option pays: why this kernel is done, in numbers."""
    median = d.median_ms or 0.0
    # The kernel that takes the time, not the one with the largest gap: stopping is about where the time goes.
    kernel = d.candidate.kernels[0].name if d.candidate.kernels else "the kernel"
    bottleneck = Bottleneck(d.regime.value) if d.regime else Bottleneck.unknown
    counters = d.kernel(kernel).counters if d.kernel(kernel) else {}
    dram = counters.get("dram_pct", counters.get("memory_pct"))
    if dram is not None and dram >= 60 and dram >= counters.get("sm_pct", 0.0):
        return Option(action=Action.stop, bottleneck=Bottleneck.memory, gain_ms=0.0, kernel=kernel, text=(
            f"Stop tuning {kernel}'s schedule: Nsight Compute puts its DRAM throughput at {dram:.0f}% of peak, so only "
            "moving fewer bytes (fusing neighbouring passes into it, narrower types where the policy allows) makes it faster."))
    if d.achieved_fraction is not None and d.achieved_fraction >= NEAR_SOL[d.kind]:
        lever = "moving fewer bytes" if d.regime is Regime.memory else "a faster math mode the policy allows"
        text = (
            f"Stop tuning {kernel}: the call runs at {d.achieved_fraction:.0%} of speed of light ({ms(d.sol_ms or 0)} of "
            f"{ms(median)}), so only {lever} could make it much faster; no rule found a change worth more than "
            f"{WORTHWHILE:.0%} of the call."
        )
        return Option(action=Action.stop, bottleneck=bottleneck, gain_ms=0.0, kernel=kernel, text=text)
    floor = CALL_FLOOR_MS[d.kind]
    c = d.candidate
    top = c.kernels[0] if c.kernels else None
    if d.kind == "gpu" and top is not None and top.pct_of_peak is not None and top.pct_of_peak >= KERNEL_AT_PEAK and c.outside_ms:
        what = rate(top.flop_rate) if top.flop_rate else bandwidth(top.byte_rate or 0.0)
        text = (
            f"Stop tuning {kernel}: the kernel itself runs at {top.pct_of_peak:.0%} of peak ({what}, {ms(top.time_ms)}); "
            f"{ms(c.outside_ms)} of the {ms(median)} call is launch cost outside it, which a CUDA graph removes "
            "(profile with cuda_graph=true to time the kernel alone), not a kernel change."
        )
        return Option(action=Action.stop, bottleneck=bottleneck, gain_ms=0.0, kernel=kernel, text=text)
    if median and median < 4 * floor + (d.sol_ms or 0):
        text = (
            f"Stop tuning {kernel}: the whole call takes {ms(median)} with {ms(c.kernel_ms)} in kernels, near the "
            f"~{ms(floor)} fixed cost of one call that eager pays too; "
            + ("time it with cuda_graph=true to see the kernel without launch overhead." if d.kind == "gpu" else "nothing left in the kernel pays.")
        )
        return Option(action=Action.stop, bottleneck=Bottleneck.launch_overhead if d.kind == "gpu" else Bottleneck.host_overhead,
                      gain_ms=0.0, kernel=kernel, text=text)
    versus = ""
    if d.baseline and d.baseline.median_ms:
        versus = f", {d.baseline.median_ms / median:.2f}x eager" if median else ""
    frac = f" at {d.achieved_fraction:.0%} of speed of light" if d.achieved_fraction is not None else ""
    if d.cov is not None and d.cov > NOISY_COV:
        # Too noisy to act on: the gap may be the host's, not the kernel's (a descheduled OpenMP thread stalls its region).
        text = (
            f"Measure {kernel} again before changing it: its timing varies too much to act on (CoV {d.cov:.0%}; "
            f"{ms(median)}{frac}{versus}), and no rule found a change worth more than {WORTHWHILE:.0%} of the call. "
            "Profile with more reps on a quieter host."
        )
        return Option(action=Action.stop, bottleneck=bottleneck, gain_ms=0.0, kernel=kernel, text=text)
    then = ("profile with hardware_counters=true for its stall reasons before changing it" if d.kind == "gpu"
            else "measure again with more reps (or on a quieter host) before changing it")
    text = (
        f"Keep {kernel} as it is{frac}{versus}: no rule found a change worth more than {WORTHWHILE:.0%} of the "
        f"{ms(median)} call from these measurements; {then}."
    )
    return Option(action=Action.stop, bottleneck=bottleneck, gain_ms=0.0, kernel=kernel, text=text)



# -- shared rules ----------------------------------------------------------------------------------


def _host(d: Digest, source: str) -> Option | None:
    c, b = d.candidate, d.baseline
    if c.median_ms is None or c.outside_ms is None:
        return None
    harness = b.outside_ms if b is not None and b.outside_ms is not None and d.kind == "gpu" else 0.0
    excess = c.outside_ms - max(harness, 0.0)
    if excess < HOST_MIN_MS[d.kind] or excess < HOST_SHARE[d.kind] * c.median_ms:
        return None
    habits = [what for pattern, what in _HOST_HABITS if pattern.search(_forward(source))]
    if not habits and (source.strip() or excess < 0.75 * c.median_ms):
        # Without host work in forward the gap is the launches' own cost (Triton's launcher alone takes tens of
        # microseconds; the launch and fusion rules price that), and a CPU breakdown's profiled pass can fall far
        # below the timed median on a busy host. Host work is the finding only when forward shows it, or (no
        # source) the gap is overwhelming.
        return None
    found = f"; forward {', '.join(habits)}" if habits else ""
    versus = f" against {ms(harness)} for eager (the timer's own share)" if d.kind == "gpu" and b is not None else ""
    how = ("compute constants once in __init__, keep data on the device, no per-call syncs" if d.kind == "gpu"
           else "compute constants once in __init__, no Python loops or list building per call")
    where = "kernel" if d.kind == "gpu" else "compiled function or op"
    text = (
        f"Move the host work out of forward ({how}): {ms(excess)} of the {ms(c.median_ms)} call is spent outside any "
        f"{where}{versus}{found}; removing it {saving(excess, c.median_ms)}."
    )
    return Option(action=Action.host_overhead, bottleneck=Bottleneck.host_overhead, gain_ms=excess, text=text)


def _forward(source: str) -> str:
    """The body of ``forward`` (what runs every call); the whole source when there is none."""
    match = re.search(r"def forward\(.*?\n((?:[ \t]+.*\n?|\n)*)", source)
    return match.group(1) if match else source


def _launches(d: Digest) -> Option | None:
    c = d.candidate
    own = c.own()
    calls = sum(k.calls for k in own)
    if c.median_ms is None or calls < 3 or not own:
        return None
    mean = sum(k.time_ms for k in own) / calls
    if mean >= SMALL_KERNEL_MS[d.kind]:
        return None
    # What one launch costs here: the measured time between kernels per launch, capped at the usual floor.
    per_launch = CALL_FLOOR_MS[d.kind]
    if c.outside_ms is not None:
        per_launch = min(per_launch, c.outside_ms / calls)
    fused = max(max(k.time_ms / k.calls for k in own), (d.sol_ms or 0.0) / STREAM[d.kind]) + per_launch
    gain = c.median_ms - fused
    if gain <= 0:
        return None
    unit = "kernel launches" if d.kind == "gpu" else "calls of compiled functions"
    text = (
        f"Fuse the {calls} {unit} per forward into one ({'or capture them in a CUDA graph' if d.kind == 'gpu' else 'one pass over the data'}): "
        f"they average {ms(mean)} each, so per-{'launch' if d.kind == 'gpu' else 'call'} overhead and the round trips between "
        f"them set the {ms(c.median_ms)}; one {'launch' if d.kind == 'gpu' else 'call'} of ~{ms(fused)} {saving(gain, c.median_ms)}."
    )
    return Option(action=Action.launch_count, bottleneck=Bottleneck.launch_overhead, gain_ms=gain, text=text)


def _fusion(d: Digest) -> Option | None:
    c = d.candidate
    if c.median_ms is None or c.kernel_ms <= 0 or d.bytes is None:
        return None
    if d.regime is Regime.compute:
        # Passes beside the main kernel (casts, epilogues) disappear into its prologue or epilogue.
        main = max((k for k in c.kernels if k.role is Role.gemm), key=lambda k: k.time_ms, default=None)
        # Cast passes stay: converting inside the main loop instead re-rounds every tile on every K step, which
        # measured slower than a pure low-precision main loop plus one cast pass (0.50 ms vs 0.22 + 0.11 ms, H200).
        extra = [k for k in c.kernels if k is not main and k.role is not Role.copy and k.time_ms >= 0.03 * c.kernel_ms]
        if main is None or not extra:
            return None
        # A separate pass costs at most a read and a write of the problem's data; a noisy breakdown may say more.
        one_pass = 2 * d.bytes / (STREAM[d.kind] * d.peak.bandwidth) * 1e3 if d.peak else float("inf")
        gain = sum(min(k.time_ms, one_pass) for k in extra)
        names = ", ".join(k.name.rsplit("::", 1)[-1] for k in extra[:3])
        text = (
            f"Fold {names} into {main.name.rsplit('::', 1)[-1]} (load and convert in its prologue, finish in its epilogue): "
            f"{'they take' if len(extra) > 1 else 'it takes'} {ms(gain)} beside the main kernel's {ms(main.time_ms)}, "
            f"each a separate pass over memory; fusing {saving(gain, c.median_ms)}."
        )
        return Option(action=Action.fusion, bottleneck=Bottleneck.memory, gain_ms=gain, kernel=extra[0].name, text=text)
    passes = [k for k in c.kernels if k.time_ms >= 0.10 * c.kernel_ms]
    if len(passes) < 2 or sum(k.calls for k in passes) < 2:
        return None
    bound = d.bytes / (STREAM[d.kind] * d.peak.bandwidth) * 1e3 if d.peak else 0.0
    fused = max(max(k.time_ms for k in passes), bound)
    launches = sum(k.calls for k in passes)
    # Each launch fused away also takes its share of the time between kernels (the launcher's own cost).
    between = (c.outside_ms or 0.0) * (launches - 1) / launches if d.kind == "gpu" and c.outside_ms else 0.0
    gain = c.kernel_ms - fused + between
    if gain <= 0:
        return None
    names = ", ".join(k.name.rsplit("::", 1)[-1] for k in passes[:4])
    text = (
        f"Fuse {names} into one kernel that reads each input once and writes each output once: {len(passes)} passes take "
        f"{ms(c.kernel_ms)} where the compulsory {size(d.bytes)} needs {ms(bound)} at {bandwidth(STREAM[d.kind] * d.peak.bandwidth) if d.peak else '?'}; "
        f"a fused kernel no slower than the longest pass ({ms(max(k.time_ms for k in passes))}) {saving(gain, c.median_ms)}."
    )
    return Option(action=Action.fusion, bottleneck=Bottleneck.memory, gain_ms=gain, kernel=passes[0].name, text=text)


def _library(d: Digest) -> Option | None:
    c = d.candidate
    if c.median_ms is None or not c.kernels:
        return None
    lib = [k for k in c.kernels if not k.own]
    lib_ms = sum(k.time_ms for k in lib)
    if not lib or lib_ms < 0.25 * c.kernel_ms:
        return None
    top = max(lib, key=lambda k: k.time_ms)
    if c.own():
        return None  # own kernels beside library ones: the fusion rule weighs folding them in
    text = (
        f"Replace {top.name} ({ms(top.time_ms)}, {top.share:.0%} of kernel time) with your own {d.backend} kernel: the "
        f"profile shows only library work ({', '.join(k.name for k in lib[:3])}), so the candidate has not started."
    )
    return Option(action=Action.library, bottleneck=Bottleneck(d.regime.value) if d.regime else Bottleneck.unknown,
                  gain_ms=0.5 * lib_ms, kernel=top.name, text=text)
