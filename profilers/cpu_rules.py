"""CPU rules: threads, vectorisation, cache blocking and loop order.

The C++ source says what the kernel lacks (an OpenMP parallel loop, a vectorisable inner loop,
unit-stride access); the digest says what fixing it could be worth on this host: its cores, its
vector lanes, and the measured peaks the roofline uses.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

from kfoundry.profilers.advice import Action, Option, saving
from kfoundry.profilers.digest import Digest, KernelLine, Regime, Role, bandwidth, ms, rate
from kfoundry.schema import Bottleneck

STREAM = 0.70
#: Vector speed-up actually seen on scalar fp32 loops (the lane count is an upper bound).
VECTOR_LANES_USED = 8
#: Below this a loop is not worth threads: fork/join and waking cores cost tens of microseconds on a busy host.
MIN_PARALLEL_MS = 0.100
#: A blocked GEMM reaches this fraction of the measured (library) peak.
BLOCKED_TARGET = 0.60

_PARALLEL = re.compile(r"#\s*pragma\s+omp\s+(parallel|for|taskloop)|std::thread|at::parallel_for|std::async|tbb::")
_SIMD = re.compile(r"#\s*pragma\s+omp\s+(parallel\s+for\s+)?simd|_mm\d*_\w+|__m(128|256|512)|vld1q|float32x4_t|#\s*pragma\s+GCC\s+ivdep")
_SIMD_REDUCTION = re.compile(r"#\s*pragma\s+omp\s+(parallel\s+for\s+)?simd[^\n]*reduction|_mm\d*_fmadd")
_NO_VECTORIZE = re.compile(r"-fno-tree-vectorize|-O[01s]\b")
_FAST_MATH = re.compile(r"-ffast-math|-funsafe-math|__FAST_MATH__|declare\s+simd")
_LIBM = re.compile(r"(?<![\w:])(std::)?(exp|expf|log|logf|tanh|tanhf|pow|powf|sin|sinf|cos|cosf|erf|erff|exp2f?)\s*\(")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_FOR = re.compile(r"for\s*\(\s*(?:int64_t|int|long|size_t|auto|int32_t|ptrdiff_t)\s+(\w+)\s*=")


class CppFacts(BaseModel):
    parallel: bool = False
    simd: bool = False
    simd_reduction: bool = False
    scalar_build: bool = False
    fast_math: bool = False
    libm_in_loop: bool = False
    serial_reduction: bool = False
    strided_inner: bool = False

    @property
    def scalar(self) -> bool:
        """Whether the hot loop likely runs one element per instruction."""
        if self.scalar_build:
            return True
        if self.libm_in_loop and not self.fast_math:
            return True  # glibc's vector exp/log need -ffast-math; without it each call is scalar
        return self.serial_reduction and not (self.simd_reduction or self.fast_math)


def cpp_facts(source: str) -> CppFacts:
    """What the C++ in ``source`` shows, comments removed (a comment naming -ffast-math does not turn it on)."""
    source = _COMMENT.sub("", source)
    return CppFacts(
        parallel=bool(_PARALLEL.search(source)),
        simd=bool(_SIMD.search(source)),
        simd_reduction=bool(_SIMD_REDUCTION.search(source)),
        scalar_build=bool(_NO_VECTORIZE.search(source)),
        fast_math=bool(_FAST_MATH.search(source)),
        libm_in_loop=bool(_LIBM.search(_loop_bodies(source))),
        serial_reduction=_serial_reduction(source),
        strided_inner=_strided_inner(source),
    )


def _loop_bodies(source: str) -> str:
    return "\n".join(line for line in source.splitlines() if _FOR.search(line) or line.startswith((" ", "\t")))


def _serial_reduction(source: str) -> bool:
    """An fp accumulator summed in a loop, ``acc += ...``, on a line of its own or a for-loop body: a dependence chain -O3 keeps scalar."""
    accumulators = set(re.findall(r"\bfloat\s+(\w+)\s*=\s*0(?:\.0*)?f?\s*;", source))
    return any(re.search(rf"\b{re.escape(a)}\s*\+=", source) for a in accumulators)


def _strided_inner(source: str) -> bool:
    """The innermost loop's index multiplies a row length inside a subscript: each step jumps a whole row."""
    lines = source.splitlines()
    for i, line in enumerate(lines):
        match = _FOR.search(line)
        if not match:
            continue
        var = match.group(1)
        body = line[match.end():] + "\n" + "\n".join(lines[i + 1:i + 3])
        if _FOR.search(body):
            continue  # not the innermost loop
        if re.search(rf"\[[^\]]*\b{re.escape(var)}\s*\*\s*\w+", body):
            return True
    return False


def options(d: Digest, source: str) -> list[Option]:
    c = d.candidate
    own = c.own()
    if not own or c.median_ms is None or d.peak is None:
        return []
    facts = cpp_facts(source)
    top = max(own, key=lambda k: k.time_ms)
    # Without the source only the numbers speak: threads is the lever they can price; vectorising needs the loop.
    found = [_threads(d, facts, top, bool(source.strip()))]
    if source.strip():
        found += [_vectorise(d, facts, top), _blocking(d, facts, top)]
    return [o for o in found if o is not None]


def _cores(d: Digest) -> int:
    return max(d.host_cores or 1, 1)


def _lanes(d: Digest) -> int:
    return min(d.vector_lanes or VECTOR_LANES_USED, VECTOR_LANES_USED)


def _own_ms(d: Digest) -> float:
    return sum(k.time_ms for k in d.candidate.own())


def _threads(d: Digest, facts: CppFacts, top: KernelLine, source_known: bool) -> Option | None:
    cores = _cores(d)
    own_ms = _own_ms(d)
    if facts.parallel or cores < 2 or own_ms < MIN_PARALLEL_MS:
        return None
    if d.regime is Regime.memory and d.bytes:
        now = d.bytes / (own_ms / 1e3)
        after = min(now * cores, STREAM * d.peak.bandwidth)
        new_ms = d.bytes / after * 1e3
        why = (f"it streams {bandwidth(now)} on one core, against {bandwidth(d.peak.bandwidth)} measured for the whole "
               f"host; {cores} cores reach ~{bandwidth(after)}")
    else:
        new_ms = own_ms / cores
        why = f"the {cores}-core host runs it on one core"
    gain = own_ms - new_ms
    if gain <= 0:
        return None
    if not source_known:
        why = why.replace("on one core", "on one core if its loops are serial (no source was given to check)")
    return Option(action=Action.threads, bottleneck=Bottleneck(d.regime.value) if d.regime else Bottleneck.unknown, gain_ms=gain,
                  kernel=top.name, text=(
        f"Parallelise {_name(top)}'s outer loop with `#pragma omp parallel for schedule(static)`: {why}; "
        f"spreading it {saving(gain, d.median_ms)}."))


def _vectorise(d: Digest, facts: CppFacts, top: KernelLine) -> Option | None:
    if not facts.scalar or facts.strided_inner:
        return None
    own_ms = _own_ms(d)
    lanes = _lanes(d)
    cores = 1 if not facts.parallel else _cores(d)
    # Never faster than the roofline of the cores it uses.
    bound = (d.sol_ms or 0.0) * (_cores(d) / cores)
    new_ms = max(own_ms / lanes, bound)
    gain = own_ms - new_ms
    if gain <= 0:
        return None
    if facts.scalar_build:
        cause, fix = "its build flags turn vectorisation off", "drop -fno-tree-vectorize (or -O1) so -O3 vectorises it"
    elif facts.libm_in_loop and not facts.fast_math:
        cause = "each element calls the scalar libm exp/log (the vector versions need relaxed math, which strict keeps off)"
        fix = "replace the call with a polynomial approximation written in plain arithmetic under `#pragma omp simd`"
    else:
        cause = "its fp32 sum is one serial dependence chain, which -O3 keeps scalar"
        fix = "declare the reduction with `#pragma omp simd reduction(+ : acc)` (or keep several partial sums)"
    return Option(action=Action.vectorise, bottleneck=Bottleneck.compute, gain_ms=gain, kernel=top.name, text=(
        f"Vectorise {_name(top)}'s inner loop: {cause}; {fix}. With {lanes} fp32 lanes per instruction it "
        f"{saving(gain, d.median_ms)}{_rate_note(d, top)}."))


def _blocking(d: Digest, facts: CppFacts, top: KernelLine) -> Option | None:
    gemm = next((k for k in d.candidate.own() if k.role is Role.gemm and k.flop_rate), None)
    if gemm is None or d.flops is None or gemm.flop_rate is None:
        return None
    lib = max((k for k in (d.baseline.kernels if d.baseline else []) if k.role is Role.gemm and k.flop_rate),
              key=lambda k: k.time_ms, default=None)
    # A CPU library rate comes from a profiled pass that can run faster than the timed one: never aim above the measured peak.
    target = min(max(BLOCKED_TARGET * d.peak.flops, lib.flop_rate if lib and lib.flop_rate else 0.0), d.peak.flops)
    if not facts.parallel:
        target /= _cores(d)
    if facts.scalar and not facts.strided_inner:
        return None  # vectorising comes first; blocking a scalar loop does not pay
    if gemm.flop_rate >= 0.85 * target:
        return None
    gain = gemm.time_ms - d.flops / target * 1e3
    if gain <= 0:
        return None
    if facts.strided_inner:
        how = ("reorder the loops so the innermost index walks memory with unit stride (i-k-j for C = A @ B), then block "
               "the k loop so a strip of B stays in cache")
        cause = "its inner loop jumps a whole row per step, so every load misses cache and nothing vectorises"
    else:
        how = ("compute a small block of outputs per iteration (e.g. 4 rows x 32 columns in registers) over a packed, "
               "k-blocked strip of the other operand")
        cause = "each loaded value feeds one FMA, so loads, not arithmetic, set the rate"
    return Option(action=Action.cache_blocking, bottleneck=Bottleneck.compute, gain_ms=gain, kernel=gemm.name, text=(
        f"Block {_name(gemm)} for reuse: {how}; {cause}. It runs at {rate(gemm.flop_rate)} "
        f"({gemm.pct_of_peak:.0%} of the measured {rate(d.peak.flops)}); reaching ~{rate(target)} {saving(gain, d.median_ms)}."))


def _rate_note(d: Digest, k: KernelLine) -> str:
    if k.flop_rate is not None and d.peak:
        return f" (now {rate(k.flop_rate)}, {k.pct_of_peak:.0%} of the measured {rate(d.peak.flops)})"
    if k.byte_rate is not None and d.peak:
        return f" (now {bandwidth(k.byte_rate)}, {k.pct_of_peak:.0%} of the measured {bandwidth(d.peak.bandwidth)})"
    return f" (now {ms(k.time_ms)})"


def _name(k: KernelLine) -> str:
    return k.name.rsplit("::", 1)[-1]
