"""The evidence a recommendation rests on: candidate and baseline kernel by kernel, against the right peak.

``digest(profile)`` turns a ``ProfileResult`` into a ``Digest``: each kernel's time per call, the
FLOP/s or bytes/s it achieves and its percentage of the peak that the backend, device and numerics
policy allow (fp32 FMA under strict, tensor-core rates only where the policy permits them, measured
peaks on a CPU), compiler facts and Nsight Compute counters where present, the time per role
(GEMM, reduction, elementwise, copy) beside the eager baseline's, and the kernel holding the gap.
``Digest.render()`` is the compact text a person or a model reads; every number a recommendation
quotes comes from it.
"""

from __future__ import annotations

import re
from enum import Enum

from pydantic import BaseModel, Field

from kfoundry.profilers.peaks import GPU_PEAKS
from kfoundry.schema import KernelCounters, KernelShare, KernelStats, ProfileResult

#: Library GEMM kernels (cuBLAS, CUTLASS, oneDNN/MKL ops) and candidate kernels named for a matrix product.
_GEMM = re.compile(
    r"gemm|matmul|\bmm\b|_mm_|aten::(mm|addmm|bmm|baddbmm|linear)|linear|cublas|cutlass|xmma|nvjet|wgmma|\bdot\b|sgemm|hgemm"
    r"|conv|mkldnn",
    re.I,
)
_REDUCTION = re.compile(r"softmax|reduce|sum|(?<!clamp_)max|(?<!clamp_)min|norm|mean|var|argm|row_", re.I)
_COPY = re.compile(r"copy|cast|convert|to_bf16|to_fp16|_to_|contiguous|transpose|clone|bf16|half", re.I)
#: Bookkeeping ops on a CPU breakdown: allocation, views, no work of their own.
_NO_WORK = re.compile(r"aten::(empty|empty_like|empty_strided|view|reshape|as_strided|t|to|resolve_|detach|lift)", re.I)


class Role(str, Enum):
    gemm = "gemm"
    reduction = "reduction"
    elementwise = "elementwise"
    copy = "copy"


class Regime(str, Enum):
    memory = "memory"
    compute = "compute"


class KernelLine(BaseModel):
    """One kernel (CPU: one op) of one side, on the timed median's scale."""

    name: str
    role: Role
    own: bool
    time_ms: float = Field(description="Time per call, scaled so the side's kernels and its outside time add up to its median.")
    calls: int
    share: float
    flop_rate: float | None = Field(default=None, description="FLOP/s, when this kernel is credited with the problem's FLOPs.")
    byte_rate: float | None = Field(default=None, description="Compulsory bytes/s, when this kernel alone moves the problem's data.")
    pct_of_peak: float | None = Field(default=None, description="flop_rate or byte_rate as a fraction of the matching peak.")
    registers: int | None = None
    spills_bytes: int | None = None
    shared_memory_bytes: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    counters: dict[str, float] = Field(default_factory=dict)


class Side(BaseModel):
    label: str
    median_ms: float | None
    kernel_ms: float = Field(description="Kernel (CPU: op) time per call on the median's scale.")
    profiled_ms: float = Field(default=0.0, description="Kernel (CPU: op) time per call as the profiled pass measured it.")
    outside_ms: float | None = Field(default=None, description="Median minus kernel time: host work, launches, the harness.")
    launches: int = Field(description="Kernel launches (CPU: op calls) per call, allocation bookkeeping excluded.")
    kernels: list[KernelLine] = Field(default_factory=list)

    def by_role(self) -> dict[Role, float]:
        out: dict[Role, float] = {}
        for k in self.kernels:
            out[k.role] = out.get(k.role, 0.0) + k.time_ms
        return out

    def own(self) -> list[KernelLine]:
        return [k for k in self.kernels if k.own]


class RoleGap(BaseModel):
    role: Role
    candidate_ms: float
    baseline_ms: float

    @property
    def gap_ms(self) -> float:
        return self.candidate_ms - self.baseline_ms


class Peak(BaseModel):
    flops: float = Field(description="FLOP/s the policy allows on this device for the problem's dtype.")
    label: str = Field(description="Which peak: 'fp32 FMA', 'bf16 tensor core', 'measured' ...")
    bandwidth: float
    source: str
    fma_flops: float | None = Field(default=None, description="The device's fp32 FMA (non-tensor-core) peak, for comparison.")


class Digest(BaseModel):
    title: str
    backend: str
    kind: str = Field(description="'gpu' or 'cpu'")
    precision: str
    peak: Peak | None = None
    flops: float | None = None
    bytes: float | None = None
    intensity: float | None = None
    ridge: float | None = None
    regime: Regime | None = None
    sol_ms: float | None = None
    achieved_fraction: float | None = None
    cov: float | None = None
    candidate: Side
    baseline: Side | None = None
    gaps: list[RoleGap] = Field(default_factory=list)
    gap_kernel: str | None = Field(default=None, description="The candidate kernel that holds the largest gap.")
    gap_ms: float | None = None
    host_cores: int | None = None
    vector_lanes: int | None = Field(default=None, description="fp32 lanes of the widest vector unit (CPU).")
    history: list[str] = Field(default_factory=list, description="Earlier attempts on this problem and what they did.")
    warnings: list[str] = Field(default_factory=list)

    @property
    def median_ms(self) -> float | None:
        return self.candidate.median_ms

    def kernel(self, name: str | None) -> KernelLine | None:
        return next((k for k in self.candidate.kernels if k.name == name), None)

    def render(self) -> str:
        return _render(self)


def digest(
    profile: ProfileResult, *, host_cores: int | None = None, vector_lanes: int | None = None, history: list[str] | None = None
) -> Digest:
    """The evidence of ``profile``; ``host_cores``/``vector_lanes`` describe the CPU it ran on (CPU backends)."""
    kind = "gpu" if profile.device.startswith("cuda") else "cpu"
    r = profile.roofline
    stats = profile.verify.kernels if profile.verify else []
    base_median = profile.eager.median_ms if profile.eager else None
    cand_median = profile.candidate.median_ms if profile.candidate else None
    peak = _peak(profile, kind)
    if kind == "cpu" and peak is not None and r is not None:
        peak = _raised(peak, r.flops, r.bytes, [m for m in (cand_median, base_median) if m])
    regime, sol_ms, achieved = None, None, None
    if r is not None and peak is not None and peak.bandwidth > 0:
        regime = Regime.memory if r.arithmetic_intensity < peak.flops / peak.bandwidth else Regime.compute
        sol_ms = max(r.flops / peak.flops, r.bytes / peak.bandwidth) * 1e3
        achieved = sol_ms / cand_median if cand_median else None
    candidate = _side("candidate", profile.breakdown, cand_median, kind, stats, profile.counters)
    baseline = _side("eager", profile.baseline_breakdown, base_median, kind, [], []) if profile.baseline_breakdown or base_median else None
    d = Digest(
        title=f"{profile.backend} on {profile.device}",
        backend=profile.backend,
        kind=kind,
        precision=profile.precision,
        peak=peak,
        flops=r.flops if r else None,
        bytes=r.bytes if r else None,
        intensity=r.arithmetic_intensity if r else None,
        ridge=peak.flops / peak.bandwidth if peak and peak.bandwidth > 0 else None,
        regime=regime,
        sol_ms=sol_ms,
        achieved_fraction=achieved,
        cov=profile.candidate.cov if profile.candidate else None,
        candidate=candidate,
        baseline=baseline,
        host_cores=host_cores if kind == "cpu" else None,
        vector_lanes=vector_lanes if kind == "cpu" else None,
        history=list(history or []),
        warnings=[w[:200] for w in profile.warnings[:4]],
    )
    _credit(d)
    _gaps(d)
    return d


# -- building --------------------------------------------------------------------------------------


def _peak(profile: ProfileResult, kind: str) -> Peak | None:
    r = profile.roofline
    if r is None:
        return None
    if kind == "cpu":
        return Peak(flops=r.peak_flops, label="measured", bandwidth=r.peak_bandwidth, source=r.peak_source)
    device = next((p for p in GPU_PEAKS.values() if p.source == r.peak_source), None)
    fma = device.fp32 if device else None
    if fma is not None and abs(r.peak_flops - fma) < 1e-6 * fma:
        label = "fp32 FMA"
    elif device is not None and abs(r.peak_flops - device.tf32) < 1e-6 * device.tf32:
        label = "TF32 tensor core"
    elif device is not None and abs(r.peak_flops - device.bf16) < 1e-6 * device.bf16:
        label = "bf16/fp16 tensor core"
    else:
        label = "datasheet"
    return Peak(flops=r.peak_flops, label=label, bandwidth=r.peak_bandwidth, source=r.peak_source, fma_flops=fma)


def _raised(peak: Peak, flops: float, nbytes: float, medians: list[float]) -> Peak:
    """A CPU peak no lower than the rates a timed call reached: a busy host measures its peaks low, and a whole
    call's rate (eager's library GEMM, a cache-resident stream) bounds the true peak from below."""
    best_flops = max((flops / (m / 1e3) for m in medians), default=0.0)
    best_bytes = max((nbytes / (m / 1e3) for m in medians), default=0.0)
    if best_flops <= peak.flops and best_bytes <= peak.bandwidth:
        return peak
    return peak.model_copy(update={
        "flops": max(peak.flops, best_flops), "bandwidth": max(peak.bandwidth, best_bytes),
        "label": "measured, raised to the best rate a timed call reached",
    })


def _side(
    label: str, rows: list[KernelShare], median: float | None, kind: str, stats: list[KernelStats], counters: list[KernelCounters],
) -> Side:
    """One side's kernels on its median's scale.

    A CPU breakdown comes from separate profiled calls whose absolute times run up to twice
    above or below the timed median on a busy host (shares are reliable): CPU op times are
    scaled down to the median when the profiled total exceeds it, and the median's remainder
    (``outside_ms``) is unattributed time that the rules read as host work only with the
    source's support. CUDA kernel times come from the device and are kept as measured.
    """
    work = [k for k in rows if not (kind == "cpu" and _NO_WORK.match(k.name))]
    raw = sum(k.time_ms for k in work)
    scale = 1.0
    outside = None
    if median and raw > 0:
        if kind == "cpu":
            scale = min(1.0, median / raw)
            outside = median - raw * scale
        else:
            outside = max(0.0, median - raw)
    kernels = [
        KernelLine(
            name=k.name, role=_role(k.name), own=k.own or k.allowed, time_ms=k.time_ms * scale, calls=k.calls,
            share=k.time_ms / raw if raw > 0 else 0.0, **_compiler(k.name, stats), counters=_counters(k.name, counters),
        )
        for k in sorted(work, key=lambda k: k.time_ms, reverse=True)
    ]
    launches = sum(k.calls for k in work if k.name != "other")
    return Side(label=label, median_ms=median, kernel_ms=raw * scale, profiled_ms=raw, outside_ms=outside, launches=launches, kernels=kernels)


def _role(name: str) -> Role:
    short = name.rsplit("::", 1)[-1] if name.startswith(("cpp::", "triton::", "cuda::")) else name
    if _GEMM.search(short):
        return Role.gemm
    if _COPY.search(short):
        return Role.copy
    if _REDUCTION.search(short):
        return Role.reduction
    return Role.elementwise


def _compiler(name: str, stats: list[KernelStats]) -> dict[str, int | None]:
    found = next((s for s in stats if s.name and s.name in name), None)
    if found is None:
        return {}
    return {
        "registers": found.registers, "spills_bytes": found.spills_bytes, "shared_memory_bytes": found.shared_memory_bytes,
        "num_warps": found.num_warps, "num_stages": found.num_stages,
    }


def _counters(name: str, counters: list[KernelCounters]) -> dict[str, float]:
    found = next((c for c in counters if c.name in name or name in c.name), None)
    if found is None:
        return {}
    picked = {
        "dram_pct": found.dram_throughput_pct, "memory_pct": found.memory_throughput_pct, "sm_pct": found.sm_throughput_pct,
        "occupancy_pct": found.achieved_occupancy_pct, "l1_hit_pct": found.l1_hit_rate_pct, "l2_hit_pct": found.l2_hit_rate_pct,
        "registers": found.registers_per_thread, "block": found.block_size, "grid": found.grid_size,
    }
    out = {k: v for k, v in picked.items() if v is not None}
    sectors = _sectors_per_request(found.raw)
    if sectors is not None:
        out["sectors_per_request"] = sectors
    return out


def _sectors_per_request(raw: dict[str, float]) -> float | None:
    """Global-load sectors per request: 4 for fully coalesced fp32 warps, up to 32 for scattered ones."""
    sectors = raw.get("l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum")
    requests = raw.get("l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum")
    if sectors and requests:
        return sectors / requests
    return None


def _credit(d: Digest) -> None:
    """Credit the problem's FLOPs to each side's GEMM kernels, and its bytes to a kernel that does the whole job alone."""
    if d.peak is None or d.flops is None or d.bytes is None:
        return
    for side in (d.candidate, d.baseline):
        if side is None or not side.kernels:
            continue
        gemms = [k for k in side.kernels if k.role is Role.gemm]
        if not gemms and d.regime is Regime.compute and side is d.candidate and side.own():
            # A compute-bound problem's FLOPs are in the candidate's main kernel whatever its name.
            top = max(side.own(), key=lambda k: k.time_ms)
            top.role = Role.gemm
            gemms = [top]
        gemm_ms = sum(k.time_ms for k in gemms)
        if d.flops > 0 and gemm_ms > 0:
            for k in gemms:
                k.flop_rate = d.flops / (gemm_ms / 1e3)
                k.pct_of_peak = k.flop_rate / d.peak.flops
        if d.regime is Regime.memory and side.kernel_ms > 0:
            top = side.kernels[0]
            if top.time_ms >= 0.8 * side.kernel_ms and top.time_ms > 0:
                top.byte_rate = d.bytes / (top.time_ms / 1e3)
                top.pct_of_peak = top.byte_rate / d.peak.bandwidth


def _gaps(d: Digest) -> None:
    cand = d.candidate.by_role()
    base = d.baseline.by_role() if d.baseline else {}
    d.gaps = sorted(
        (RoleGap(role=role, candidate_ms=cand.get(role, 0.0), baseline_ms=base.get(role, 0.0)) for role in set(cand) | set(base)),
        key=lambda g: g.gap_ms, reverse=True,
    )
    if not d.candidate.kernels:
        return
    if d.baseline and d.gaps and d.gaps[0].gap_ms > 0:
        role = d.gaps[0].role
        holder = max((k for k in d.candidate.kernels if k.role is role), key=lambda k: k.time_ms, default=None)
        if holder is not None:
            d.gap_kernel, d.gap_ms = holder.name, d.gaps[0].gap_ms
            return
    top = d.candidate.kernels[0]
    d.gap_kernel, d.gap_ms = top.name, None


# -- rendering -------------------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value * 1e3:.1f} us" if value < 0.1 else f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"


def rate(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:.1f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.1f} GFLOP/s"


def bandwidth(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e12:.2f} TB/s" if bytes_per_s >= 1e12 else f"{bytes_per_s / 1e9:.1f} GB/s"


def size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _short(name: str, width: int = 56) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


def _kernel_text(k: KernelLine) -> str:
    parts = [f"{k.share:5.1%} {ms(k.time_ms):>9} x{k.calls:<3} {'own' if k.own else 'lib'} {k.role.value:<11}"]
    if k.flop_rate is not None:
        parts.append(f"{rate(k.flop_rate)} ({k.pct_of_peak:.0%} of peak)")
    elif k.byte_rate is not None:
        parts.append(f"{bandwidth(k.byte_rate)} ({k.pct_of_peak:.0%} of peak)")
    facts = [
        f"{label} {value}" for label, value in (
            ("regs", k.registers), ("spills", k.spills_bytes), ("smem", k.shared_memory_bytes),
            ("warps", k.num_warps), ("stages", k.num_stages),
        ) if value is not None
    ]
    facts += [f"{name} {value:.0f}" for name, value in k.counters.items()]
    if facts:
        parts.append("[" + ", ".join(facts) + "]")
    parts.append(_short(k.name))
    return "  " + " ".join(parts)


def _render(d: Digest) -> str:
    lines = [f"{d.title}, policy {d.precision}"]
    if d.peak:
        peak = f"peak {rate(d.peak.flops)} {d.peak.label}, {bandwidth(d.peak.bandwidth)} [{d.peak.source}]"
        if d.peak.fma_flops and d.peak.label != "fp32 FMA":
            peak += f"; fp32 FMA {rate(d.peak.fma_flops)}"
        lines.append(peak)
    if d.flops is not None and d.bytes is not None and d.ridge is not None and d.regime is not None:
        sol = f"; SOL {ms(d.sol_ms)}" if d.sol_ms is not None else ""
        lines.append(
            f"problem: {d.flops:.3g} FLOP, {size(d.bytes)} compulsory, {d.intensity:.3g} FLOP/B vs ridge {d.ridge:.3g} "
            f"-> {d.regime.value}-bound{sol}"
        )
    head = []
    c, b = d.candidate, d.baseline
    if c.median_ms is not None:
        head.append(f"candidate {ms(c.median_ms)}" + (f" (CoV {d.cov:.2f})" if d.cov is not None else ""))
    if b is not None and b.median_ms is not None:
        head.append(f"eager {ms(b.median_ms)}" + (f" -> {b.median_ms / c.median_ms:.2f}x" if c.median_ms else ""))
    if d.achieved_fraction is not None:
        head.append(f"{d.achieved_fraction:.0%} of SOL")
    if head:
        lines.append(" | ".join(head))
    for side in (c, b):
        if side is None or not side.kernels:
            continue
        if d.kind == "gpu":
            outside = f", {ms(side.outside_ms)} outside kernels" if side.outside_ms is not None else ""
            lines.append(f"{side.label}: {side.launches} launch{'es' if side.launches != 1 else ''}, {ms(side.kernel_ms)} in kernels{outside}")
        else:
            rest = f", {ms(side.outside_ms)} of the median unattributed" if side.outside_ms else ""
            lines.append(f"{side.label}: {side.launches} op call{'s' if side.launches != 1 else ''}, {ms(side.kernel_ms)} in ops{rest}")
        lines += [_kernel_text(k) for k in side.kernels[: 6 if side is c else 4]]
    if b is not None and d.gaps:
        lines.append("time by role (candidate vs eager): " + "; ".join(
            f"{g.role.value} {ms(g.candidate_ms)} vs {ms(g.baseline_ms)}" for g in d.gaps if g.candidate_ms or g.baseline_ms
        ))
    if d.gap_kernel:
        held = f" (+{ms(d.gap_ms)} over eager)" if d.gap_ms else ""
        lines.append(f"gap held by: {_short(d.gap_kernel)}{held}")
    if d.host_cores:
        lines.append(f"host: {d.host_cores} cores" + (f", {d.vector_lanes} fp32 vector lanes" if d.vector_lanes else ""))
    lines += [f"history: {h}" for h in d.history[-4:]]
    lines += [f"warning: {w}" for w in d.warnings]
    return "\n".join(lines)
