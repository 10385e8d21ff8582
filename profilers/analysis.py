"""Rule-based profile analysis: one bottleneck, one recommendation, the facts behind it.

Works with no model. Rules run from the most to the least decisive signal: a call too
short to be anything but overhead, time spent outside any kernel, many tiny launches,
library ops left beside the candidate's own kernel, hardware counters, and finally the
roofline position. The first rule that fires names the bottleneck.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from kfoundry.backends import REGISTRY, get_backend
from kfoundry.profilers.breakdown import shares
from kfoundry.profilers.textparse import kernel_counters, looks_own, parse_ncu_csv, parse_profiler_table
from kfoundry.schema import Bottleneck, KernelCounters, KernelShare, ProfileResult, State

_TINY_MS = {"cpu": 0.020, "gpu": 0.005}  # below this a call is dominated by fixed per-call cost
_SMALL_OP_MS = {"cpu": 0.020, "gpu": 0.010}
_MANY_OPS = 8
_LIBRARY_SHARE = 0.25
_NOISY_COV = 0.10
_NEAR_SOL = 0.70
_GEMM = re.compile(
    r"aten::(mm|addmm|bmm|baddbmm|matmul|linear|conv|_convolution|mkldnn_convolution)|gemm|cublas|cutlass|xmma", re.I
)


class Diagnosis(BaseModel):
    bottleneck: Bottleneck
    digest: str = Field(description="Compact multi-line summary of the measurements.")
    recommendation: str = Field(description="The ONE change most likely to pay off next, with numbers.")
    evidence: list[str] = Field(default_factory=list, description="Short measured facts behind it.")


def diagnose(profile: ProfileResult, candidate_source: str | None = None) -> Diagnosis:
    """Classify a profile's bottleneck and recommend one concrete change."""
    return _Rules(profile, candidate_source or "").run(title=f"{profile.backend} on {profile.device}")


def diagnose_text(text: str) -> Diagnosis:
    """Diagnose pasted profiler output: a torch.profiler table or Nsight Compute CSV."""
    table = parse_profiler_table(text)
    if table is not None:
        on_device = table.device is not None and any(r.self_device_us > 0 for r in table.rows)
        rows = table.rows
        if on_device:
            # Kernel rows have no CPU self time; CPU op rows repeat the time of kernels they launched.
            kernels = [r for r in rows if r.self_device_us > 0 and r.self_cpu_us == 0] or [
                r for r in rows if r.self_device_us > 0
            ]
            triples = [(r.name, r.self_device_us, r.calls) for r in kernels]
        else:
            triples = [
                (r.name, r.self_cpu_us, r.calls) for r in rows if not r.name.startswith(("ProfilerStep", "[memory]"))
            ]
        profile = _text_profile("cuda" if on_device else "cpu", shares(triples, calls=1, is_own=looks_own), None)
        return _Rules(profile, "").run(title=f"torch.profiler table ({profile.device})")
    report = parse_ncu_csv(text)
    if report is not None:
        triples = [(k, m.get("duration_us", 0.0), int(m["launches"])) for k, m in report.kernels.items()]
        profile = _text_profile("cuda", shares(triples, calls=1, is_own=looks_own), kernel_counters(report))
        return _Rules(profile, "").run(title="Nsight Compute CSV")
    return Diagnosis(
        bottleneck=Bottleneck.unknown,
        digest=f"unrecognised profiler text ({len(text)} chars)",
        recommendation=(
            "Paste torch.profiler output from prof.key_averages().table() or Nsight Compute CSV from "
            "`ncu --csv --page details` (or `--page raw`); this text matched neither format."
        ),
    )


def _text_profile(
    device: str, breakdown: list[KernelShare], counters: list[KernelCounters] | None
) -> ProfileResult:
    return ProfileResult(
        state=State.correct,
        backend="text",
        device=device,
        breakdown=breakdown,
        counters=counters or [],
        counters_status="collected" if counters else "not requested",
        duration_s=0.0,
        run_id="text",
    )


class _Rules:
    def __init__(self, profile: ProfileResult, source: str) -> None:
        self.p = profile
        self.source = source
        self.kind = "gpu" if profile.device.startswith("cuda") else "cpu"
        self.unit = "kernel" if self.kind == "gpu" else "op"
        self.evidence: list[str] = []
        self.median = profile.candidate.median_ms if profile.candidate else None
        rows = [k for k in profile.breakdown if k.name != "other"]
        self.library = [k for k in rows if not k.own]
        self.own = [k for k in rows if k.own]
        self.kernel_ms = sum(k.time_ms for k in profile.breakdown)
        self.launches = sum(k.calls for k in profile.breakdown)
        self.regime = self._regime()

    def _source_hint(self) -> str | None:
        """The candidate's backend's suggestion from what its source lacks (none for pasted text)."""
        if not self.source or self.regime is None or self.p.backend not in REGISTRY:
            return None
        return get_backend(self.p.backend).source_hint(self.source, self.regime)

    def run(self, title: str) -> Diagnosis:
        self._collect_evidence()
        bottleneck, recommendation = (
            self._tiny()
            or self._outside_kernels()
            or self._many_small()
            or self._library()
            or self._counters()
            or self._roofline()
            or self._fallback()
        )
        return Diagnosis(
            bottleneck=bottleneck,
            digest=self._digest(title, bottleneck),
            recommendation=recommendation,
            evidence=self.evidence,
        )

    # -- facts ---------------------------------------------------------------------------

    def _regime(self) -> Bottleneck | None:
        r = self.p.roofline
        if r is None or r.peak_bandwidth <= 0:
            return None
        return Bottleneck.memory if r.arithmetic_intensity < r.peak_flops / r.peak_bandwidth else Bottleneck.compute

    def _collect_evidence(self) -> None:
        p, ev = self.p, self.evidence
        if p.candidate:
            ev.append(
                f"candidate median {_ms(p.candidate.median_ms)} over {p.candidate.n} runs (CoV {p.candidate.cov:.2f})"
            )
            if p.candidate.cov > _NOISY_COV:
                ev.append(
                    f"timings are noisy (CoV {p.candidate.cov:.2f} > {_NOISY_COV}); "
                    f"differences under ~{p.candidate.cov:.0%} are not meaningful"
                )
        if p.speedup_vs_eager is not None:
            ev.append(
                f"{p.speedup_vs_eager:.2f}x vs eager" + (" (slower than eager)" if p.speedup_vs_eager < 1 else "")
            )
        if p.speedup_vs_compile is not None:
            ev.append(f"{p.speedup_vs_compile:.2f}x vs torch.compile")
        if p.roofline and self.regime:
            r = p.roofline
            ridge = r.peak_flops / r.peak_bandwidth
            ev.append(
                f"arithmetic intensity {r.arithmetic_intensity:.2f} FLOP/B vs ridge {ridge:.1f} "
                f"-> {self.regime.value}-bound problem"
            )
            if r.achieved_fraction is not None:
                ev.append(f"{r.achieved_fraction:.0%} of speed of light ({_ms(r.sol_ms)})")
        if self.library and self.own:
            ev.append(f"library {self.unit}s take {sum(k.share for k in self.library):.0%} of {self.unit} time")

    def _achieved(self) -> tuple[float, float] | None:
        """Achieved (bytes/s, FLOP/s) when both the roofline and a median are known."""
        if self.p.roofline is None or not self.median:
            return None
        seconds = self.median / 1e3
        return self.p.roofline.bytes / seconds, self.p.roofline.flops / seconds

    # -- rules: each returns (bottleneck, recommendation) or None -------------------------

    def _overhead(self) -> Bottleneck:
        return Bottleneck.launch_overhead if self.kind == "gpu" else Bottleneck.host_overhead

    def _tiny(self) -> tuple[Bottleneck, str] | None:
        if self.median is None or self.median >= _TINY_MS[self.kind]:
            return None
        us = self.median * 1e3
        self.evidence.append(
            f"the whole call takes {us:.1f} us, under ~{_TINY_MS[self.kind] * 1e3:.0f} us of per-call cost"
        )
        if self.kind == "gpu" and self.launches > 1:
            return self._overhead(), (
                f"Fuse the {self.launches} kernel launches per call into one kernel (or capture them in a CUDA graph): "
                f"the call takes only {us:.1f} us, so launch latency, not the kernels, sets the time."
            )
        return self._overhead(), (
            "Remove per-call host work around the kernel (output allocation, .contiguous()/dtype copies, Python "
            f"reshapes): the call takes only {us:.1f} us, so fixed overhead outweighs the computation."
        )

    def _outside_kernels(self) -> tuple[Bottleneck, str] | None:
        if self.median is None or not self.p.breakdown or self.kernel_ms >= 0.3 * self.median:
            return None
        outside = 1 - self.kernel_ms / self.median
        self.evidence.append(
            f"{self.unit}s account for {_ms(self.kernel_ms)} of the {_ms(self.median)} call ({outside:.0%} elsewhere)"
        )
        return Bottleneck.host_overhead, (
            "Move Python-side work out of forward (per-call compilation or allocation, .item()/.cpu() syncs, loops "
            f"over tensors): {outside:.0%} of the {_ms(self.median)} call is spent outside any {self.unit}."
        )

    def _many_small(self) -> tuple[Bottleneck, str] | None:
        if self.launches < _MANY_OPS or self.kernel_ms / self.launches >= _SMALL_OP_MS[self.kind]:
            return None
        mean_us = self.kernel_ms / self.launches * 1e3
        per = " in the trace" if self.p.backend == "text" else " per forward"
        self.evidence.append(f"{self.launches} {self.unit} calls{per} averaging {mean_us:.1f} us each")
        return self._overhead(), (
            f"Fuse the {self.launches} {self.unit} calls{per} into one or a few kernels: they average {mean_us:.1f} us "
            f"each, so per-launch overhead and the memory round trips between them dominate."
        )

    def _library(self) -> tuple[Bottleneck, str] | None:
        if not self.library:
            return None
        top = sorted(self.library, key=lambda k: k.share, reverse=True)
        share = sum(k.share for k in self.library)
        names = ", ".join(k.name for k in top[:3])
        if not self.own and self.p.backend != "text":
            return self.regime or Bottleneck.unknown, (
                f"Replace {top[0].name} ({top[0].share:.0%} of the time) with your own {self.p.backend} kernel: "
                f"the profile shows no kernel of the {self.p.backend} backend, only library {self.unit}s ({names})."
            )
        if not self.own or share < _LIBRARY_SHARE:
            return None
        ms = sum(k.time_ms for k in self.library)
        if _GEMM.search(top[0].name):
            return self.regime or Bottleneck.compute, (
                f"Write the GEMM ({top[0].name}) as your own kernel with your elementwise work fused into its "
                f"epilogue: library {self.unit}s ({names}) take {share:.0%} ({_ms(ms)}) of the time and your kernel "
                "re-reads their output."
            )
        return self.regime or Bottleneck.memory, (
            f"Fuse {names} into your kernel: they take {share:.0%} ({_ms(ms)}) of the time, and each separate "
            f"{self.unit} makes another full pass over memory."
        )

    def _counters(self) -> tuple[Bottleneck, str] | None:
        if not self.p.counters:
            return None
        top = max(self.p.counters, key=lambda k: k.duration_us or 0.0)
        name = top.name
        dram = top.dram_throughput_pct if top.dram_throughput_pct is not None else top.memory_throughput_pct
        sm = top.sm_throughput_pct
        occ = top.achieved_occupancy_pct
        facts = [f"{label} {v:.0f}%" for label, v in (("DRAM", dram), ("SM", sm), ("occupancy", occ)) if v is not None]
        if not facts:
            return None
        self.evidence.append(f"{_short(name)}: " + ", ".join(facts))
        if dram is not None and dram >= 60 and dram >= (sm or 0):
            return Bottleneck.memory, (
                f"Cut the bytes {_short(name)} moves (fuse neighbouring ops, keep reused tiles in shared memory, use "
                f"a narrower dtype): DRAM throughput is already {dram:.0f}% of peak, so only less traffic helps."
            )
        if sm is not None and sm >= 60:
            return Bottleneck.compute, (
                f"Move {_short(name)}'s math onto tensor cores (tl.dot / mma with bf16 or tf32 inputs) or cut "
                f"instructions per element: SM throughput is {sm:.0f}% of peak while DRAM is {dram or 0:.0f}%."
            )
        if occ is not None and occ < 40:
            return Bottleneck.latency, (
                f"Raise occupancy of {_short(name)} from {occ:.0f}% (fewer registers or less shared memory per block, "
                f"or more blocks): neither DRAM ({dram or 0:.0f}%) nor SM ({sm or 0:.0f}%) is busy, so stalls show."
            )
        return Bottleneck.latency, (
            f"Give each thread of {_short(name)} more independent work (unroll, several elements per thread, "
            f"async copies): DRAM {dram or 0:.0f}% and SM {sm or 0:.0f}% are both far from peak, so latency is exposed."
        )

    def _roofline(self) -> tuple[Bottleneck, str] | None:
        r = self.p.roofline
        if r is None or self.regime is None:
            return None
        frac = r.achieved_fraction
        achieved = self._achieved()
        if frac is not None and frac >= _NEAR_SOL:
            lever = (
                "moving fewer bytes (narrower dtype, fusing with neighbouring ops)"
                if self.regime is Bottleneck.memory
                else "lower-precision tensor-core math"
            )
            return self.regime, (
                f"Stop tuning this kernel's schedule: it runs at {frac:.0%} of speed of light, so only {lever} can "
                "make it much faster."
            )
        hint = self._source_hint()
        if self.regime is Bottleneck.memory:
            rate = (
                f"it moves {_bytes(r.bytes)} at {achieved[0] / 1e9:.1f} GB/s, "
                f"{achieved[0] / r.peak_bandwidth:.0%} of {r.peak_bandwidth / 1e9:.0f} GB/s"
                if achieved
                else f"arithmetic intensity is {r.arithmetic_intensity:.2f} FLOP/B"
            )
            return self.regime, (
                hint or "Make memory access contiguous and vectorised (128-bit loads, consecutive elements per thread)"
            ) + f": {rate}."
        rate = (
            f"it reaches {achieved[1] / 1e9:.1f} GFLOP/s, "
            f"{achieved[1] / r.peak_flops:.0%} of {r.peak_flops / 1e9:.0f} GFLOP/s"
            if achieved
            else f"arithmetic intensity is {r.arithmetic_intensity:.1f} FLOP/B"
        )
        default = (
            "Tile the computation for reuse in shared memory and use tensor cores (mma / tl.dot)"
            if self.kind == "gpu"
            else "Block the loops for cache reuse and vectorise the inner loop (or call into BLAS for the GEMM part)"
        )
        return self.regime, (hint or default) + f": {rate}."

    def _fallback(self) -> tuple[Bottleneck, str]:
        ranked = sorted(self.p.breakdown, key=lambda k: k.share, reverse=True)
        top = next((k for k in ranked if k.name != "other"), None)
        if top is not None:
            action = (
                f"Optimise {_short(top.name)}"
                if top.own
                else f"Replace {_short(top.name)} with a custom kernel fused with its neighbours"
            )
            return Bottleneck.unknown, (
                f"{action}: it takes {top.share:.0%} ({_ms(top.time_ms)}) of the {self.unit} time, more than any other "
                f"{self.unit}; without FLOPs, bytes or counters the profile cannot say which resource limits it."
            )
        if self.p.speedup_vs_eager is not None and self.p.speedup_vs_eager < 1:
            return Bottleneck.unknown, (
                f"Profile eager and the candidate per {self.unit} (breakdown) to see where the "
                f"{1 / self.p.speedup_vs_eager:.1f}x slowdown against eager comes from; the timing alone does not say."
            )
        return Bottleneck.unknown, (
            "Run profile with the reference problem so FLOPs, bytes and a per-kernel breakdown are available; "
            "timing alone does not show the bottleneck."
        )

    # -- digest --------------------------------------------------------------------------

    def _digest(self, title: str, bottleneck: Bottleneck) -> str:
        p = self.p
        head = [title]
        if c := p.candidate:
            head.append(f"candidate {_ms(c.median_ms)} (IQR {_ms(c.iqr_ms)}, CoV {c.cov:.2f}, n={c.n})")
        for label, timing, speedup in (
            ("eager", p.eager, p.speedup_vs_eager),
            ("compile", p.compiled, p.speedup_vs_compile),
        ):
            if timing:
                head.append(f"{label} {_ms(timing.median_ms)}" + (f" -> {speedup:.2f}x" if speedup is not None else ""))
        lines = [" | ".join(head), f"bottleneck: {bottleneck.value}"]
        if p.roofline:
            r = p.roofline
            frac = f", {r.achieved_fraction:.0%} achieved" if r.achieved_fraction is not None else ""
            lines.append(
                f"roofline: {r.flops:.3g} FLOP, {_bytes(r.bytes)}, AI {r.arithmetic_intensity:.2f} FLOP/B "
                f"(ridge {r.peak_flops / r.peak_bandwidth:.1f}); SOL {_ms(r.sol_ms)}{frac} [{r.peak_source}]"
            )
        per = "in the trace" if p.backend == "text" else "per call"
        for label, rows in ((f"{self.unit}s (self time {per})", p.breakdown), ("eager ops", p.baseline_breakdown[:5])):
            if rows:
                lines.append(f"{label}:")
                lines += [
                    f"  {k.share:6.1%} {_ms(k.time_ms):>10} x{k.calls:<4} {'own' if k.own else 'lib'}  {_short(k.name)}"
                    for k in rows[:10]
                ]
        for k in p.counters[:5]:
            shown = {
                "duration_us": k.duration_us, "dram_pct": k.dram_throughput_pct, "sm_pct": k.sm_throughput_pct,
                "occupancy_pct": k.achieved_occupancy_pct, "l2_hit_pct": k.l2_hit_rate_pct, "regs": k.registers_per_thread,
            }
            lines.append(f"counters {_short(k.name)}: " + ", ".join(f"{n} {v:.1f}" for n, v in shown.items() if v is not None))
        lines += [f"warning: {w}" for w in p.warnings[:5]]
        return "\n".join(lines)


def _ms(ms: float) -> str:
    return f"{ms * 1e3:.1f} us" if ms < 0.1 else f"{ms:.3f} ms"


def _bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _short(name: str, width: int = 60) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."
