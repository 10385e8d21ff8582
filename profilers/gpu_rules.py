"""GPU rules: the GEMM main loop against the library, tile configuration, precision use under the policy, coalescing.

What the candidate's source says (Triton's tl.dot, tile sizes, warps and stages, casts inside the
main loop; CUDA's mma/wmma) sharpens the advice; the numbers come from the digest. Compiler facts
(warps, stages) from the build take precedence over what the source text suggests.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

from kfoundry.profilers.advice import Action, Option, saving
from kfoundry.profilers.digest import Digest, KernelLine, Regime, Role, bandwidth, ms, rate, size
from kfoundry.schema import Bottleneck

#: Fraction of the policy's peak a good tensor-core GEMM reaches (what the precision rule aims for).
TENSOR_CORE_TARGET = 0.50
#: Fraction of the fp32 FMA peak a good FMA GEMM reaches when no library kernel shows the rate.
FMA_TARGET = 0.70
STREAM = 0.85
#: A GEMM within this fraction of the library's rate is done.
MATCHED = 0.90
SMALL_TILE = 64 * 64
REGISTER_LIMIT = 255
#: Kernels this short are launch-sized: their bandwidth says nothing about their access pattern.
LAUNCH_SIZED_MS = 0.020


class TritonFacts(BaseModel):
    dot: bool = False
    ieee: bool = False
    blocks: dict[str, int] = {}
    num_warps: int | None = None
    num_stages: int | None = None
    cast_in_loop: bool = False


def triton_facts(source: str) -> TritonFacts:
    """What a Triton candidate's source shows: tl.dot use, launch-time BLOCK sizes, warps, stages, casts in loops."""
    blocks = {name: int(v) for name, v in re.findall(r"\b(BLOCK\w*)\s*=\s*(\d+)\b", source)}
    warps = [int(v) for v in re.findall(r"num_warps\s*=\s*(\d+)", source)]
    stages = [int(v) for v in re.findall(r"num_stages\s*=\s*(\d+)", source)]
    return TritonFacts(
        dot="tl.dot(" in source,
        ieee=bool(re.search(r"input_precision\s*=\s*[\"']ieee", source)),
        blocks=blocks,
        num_warps=min(warps) if warps else None,
        num_stages=min(stages) if stages else None,
        cast_in_loop=_cast_in_loop(source),
    )


def _cast_in_loop(source: str) -> bool:
    """A ``.to(bf16/fp16)`` inside a ``for`` loop body: the tile is rounded again on every K step."""
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if not re.match(r"\s*for\b", line):
            continue
        indent = len(line) - len(line.lstrip())
        for body in lines[i + 1:]:
            if body.strip() and len(body) - len(body.lstrip()) <= indent:
                break
            if re.search(r"\.to\(\s*tl\.(bfloat16|float16)", body):
                return True
    return False


def _uses_matrix_units(d: Digest, source: str) -> bool:
    if d.backend == "triton":
        return "tl.dot(" in source
    return bool(re.search(r"wmma|mma\.sync|mma_sync|wgmma|cute::|cublas", source))


def options(d: Digest, source: str) -> list[Option]:
    found: list[Option] = []
    gemm = _main_gemm(d)
    if gemm is not None and gemm.flop_rate:
        found += _gemm_options(d, gemm, source)
    if d.regime is Regime.memory:
        option = _stream_option(d, source)
        if option is not None:
            found.append(option)
    return found


def _main_gemm(d: Digest) -> KernelLine | None:
    return max((k for k in d.candidate.kernels if k.role is Role.gemm and k.own), key=lambda k: k.time_ms, default=None)


def _library_gemm(d: Digest) -> KernelLine | None:
    if d.baseline is None:
        return None
    return max((k for k in d.baseline.kernels if k.role is Role.gemm and k.flop_rate), key=lambda k: k.time_ms, default=None)


def _policy_allows_matrix_math(d: Digest) -> bool:
    return d.peak is not None and d.peak.label != "fp32 FMA"


def _math(d: Digest) -> str:
    """The operand type tensor cores would take: the policy's where it relaxes, else the problem's own."""
    return {"bf16": "bf16", "fp16": "fp16", "tf32": "tf32"}.get(d.precision, "bf16" if d.peak and "bf16" in d.peak.label else "fp16")


def _gemm_options(d: Digest, g: KernelLine, source: str) -> list[Option]:
    assert d.peak is not None and d.flops is not None and g.flop_rate is not None
    out: list[Option] = []
    lib = _library_gemm(d)
    median = d.median_ms
    name = g.name.rsplit("::", 1)[-1]
    here = f"{name} runs at {rate(g.flop_rate)} ({g.pct_of_peak:.0%} of the {rate(d.peak.flops)} {d.peak.label} peak)"
    libtext = f" while eager's {_short(lib.name)} runs at {rate(lib.flop_rate)}" if lib and lib.flop_rate else ""
    facts = triton_facts(source) if d.backend == "triton" else TritonFacts(dot=_uses_matrix_units(d, source))
    matrix = _uses_matrix_units(d, source)

    if _policy_allows_matrix_math(d):
        target = max(TENSOR_CORE_TARGET * d.peak.flops, lib.flop_rate if lib and lib.flop_rate else 0.0)
        new_ms = d.flops / target * 1e3
        fma = d.peak.fma_flops or 0.0
        if facts.cast_in_loop:
            cast_ms = 1.5 * (d.bytes or 0.0) / (STREAM * d.peak.bandwidth) * 1e3
            gain = g.time_ms - new_ms - cast_ms
            if gain > 0:
                out.append(Option(
                    action=Action.precision, bottleneck=Bottleneck.compute, gain_ms=gain, kernel=g.name, reduces_precision=d.precision != "strict",
                    text=(f"Stop rounding fp32 tiles inside {name}'s main loop: cast the operands to {_math(d)} once "
                          f"(a separate pass, ~{ms(cast_ms)} for {size(d.bytes or 0)}) and feed tl.dot {_math(d)} tiles directly. "
                          f"{here}{libtext}; a pure {_math(d)} main loop at ~{rate(target)} {saving(gain, median)}."),
                ))
        elif not matrix or (fma and g.flop_rate <= 1.1 * fma):
            gain = g.time_ms - new_ms
            if gain > 0:
                out.append(Option(
                    action=Action.precision, bottleneck=Bottleneck.compute, gain_ms=gain, kernel=g.name, reduces_precision=d.precision != "strict",
                    text=(f"Put {name}'s products on tensor cores: the {d.precision} policy allows {d.peak.label} math, but {here}, "
                          f"no faster than fp32 FMA; tl.dot on {_math(d)} tiles accumulating in fp32 at ~{rate(target)} "
                          f"{saving(gain, median)}."),
                ))

    if out:
        # The precision change rewrites the main loop (tensor cores, or tiles no longer re-rounded every K step):
        # retuning tiles or the FMA loop before it would tune code that is about to go.
        return out
    # Main loop and tiles: aim for the library's rate, or a good FMA GEMM's when eager shows none.
    if lib is not None and lib.flop_rate:
        target_rate, against = lib.flop_rate, f"eager's {_short(lib.name)} ({rate(lib.flop_rate)})"
    elif not _policy_allows_matrix_math(d):
        target_rate, against = FMA_TARGET * d.peak.flops, f"{FMA_TARGET:.0%} of the fp32 FMA peak"
    else:
        target_rate, against = TENSOR_CORE_TARGET * d.peak.flops, f"{TENSOR_CORE_TARGET:.0%} of the {d.peak.label} peak"
    if g.flop_rate >= MATCHED * target_rate:
        return out
    gain = g.time_ms - d.flops / target_rate * 1e3
    share = g.time_ms / median if median else 0.0
    lead = f"the GEMM is {share:.0%} of the call at {g.flop_rate / target_rate:.0%} of the rate of {against}: matching it {saving(gain, median)}"
    if not matrix:
        how = ("tl.dot on (BLOCK_M, BLOCK_K) x (BLOCK_K, BLOCK_N) tiles" if d.backend == "triton"
               else "register-tiled shared-memory blocks (each thread computing a 4x4 or 8x8 sub-tile)")
        strict = ", input_precision=\"ieee\" so the products stay fp32 as the strict policy requires" if d.precision == "strict" and d.backend == "triton" else ""
        out.append(Option(
            action=Action.main_loop, bottleneck=Bottleneck.compute, gain_ms=gain, kernel=g.name,
            text=f"Rewrite {name}'s main loop with {how}{strict}: it updates the accumulator one rank-1 product at a time; {lead}.",
        ))
        return out
    tiles = _tile_text(facts, g)
    small = _small_tiles(facts, g)
    advice = ("raise them to 128 x 128 x 32 with 8 warps and 3 stages" if small
              else "autotune over BLOCK_M/BLOCK_N in {64, 128, 256}, BLOCK_K in {32, 64}, num_warps in {4, 8}, num_stages in {3, 4, 5} "
                   "and group programs along M (GROUP_M) for L2 reuse")
    out.append(Option(
        action=Action.tile_config, bottleneck=Bottleneck.compute, gain_ms=gain, kernel=g.name,
        text=f"Retune {name}'s tiles{tiles}: {advice}; {lead}.",
    ))
    return out


def _small_tiles(facts: TritonFacts, g: KernelLine) -> bool:
    m, n = facts.blocks.get("BLOCK_M"), facts.blocks.get("BLOCK_N")
    warps = g.num_warps or facts.num_warps
    stages = g.num_stages or facts.num_stages
    return bool((m and n and m * n < SMALL_TILE) or (warps is not None and warps < 4) or (stages is not None and stages < 2))


def _tile_text(facts: TritonFacts, g: KernelLine) -> str:
    parts = []
    dims = [facts.blocks.get(k) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")]
    if all(dims):
        parts.append(" x ".join(str(v) for v in dims))
    warps = g.num_warps or facts.num_warps
    stages = g.num_stages or facts.num_stages
    if warps is not None:
        parts.append(f"{warps} warp{'s' if warps != 1 else ''}")
    if stages is not None:
        parts.append(f"{stages} stage{'s' if stages != 1 else ''}")
    if g.registers is not None and g.registers >= REGISTER_LIMIT - 32:
        parts.append(f"{g.registers} registers per thread, at the {REGISTER_LIMIT} limit")
    if g.spills_bytes:
        parts.append(f"{g.spills_bytes} B spilled")
    return f" (now {', '.join(parts)})" if parts else ""


def _stream_option(d: Digest, source: str) -> Option | None:
    """A memory-bound problem done by one own kernel well below bandwidth: block size or access pattern."""
    c = d.candidate
    own = c.own()
    if not own or d.peak is None or d.bytes is None or c.kernel_ms <= 0:
        return None
    top = max(own, key=lambda k: k.time_ms)
    if top.time_ms < 0.6 * c.kernel_ms or top.byte_rate is None or top.pct_of_peak is None or top.pct_of_peak >= 0.6:
        return None
    if top.time_ms / top.calls < LAUNCH_SIZED_MS:
        return None  # a few microseconds of work cannot ramp up to full bandwidth, whatever its access pattern
    bound = d.bytes / (STREAM * d.peak.bandwidth) * 1e3
    gain = top.time_ms - bound
    if gain <= 0:
        return None
    name = top.name.rsplit("::", 1)[-1]
    here = (f"{name} moves the compulsory {size(d.bytes)} at {bandwidth(top.byte_rate)} ({top.pct_of_peak:.0%} of "
            f"{bandwidth(d.peak.bandwidth)}); at {STREAM:.0%} of peak it {saving(gain, d.median_ms)}")
    facts = triton_facts(source) if d.backend == "triton" else TritonFacts()
    sectors = top.counters.get("sectors_per_request")
    block = max(facts.blocks.values()) if facts.blocks else None
    warps = top.num_warps or facts.num_warps
    if sectors is not None and sectors > 8:
        return Option(action=Action.coalescing, bottleneck=Bottleneck.memory, gain_ms=gain, kernel=top.name, text=(
            f"Make {name}'s loads coalesced: Nsight Compute counts {sectors:.1f} sectors per request (4 when a warp reads 128 "
            f"contiguous bytes); index the contiguous last dimension with tl.arange so neighbouring lanes read neighbouring "
            f"addresses. {here}."))
    if block is not None and (block < 256 or (warps == 1 and block < 1024)):
        return Option(action=Action.tile_config, bottleneck=Bottleneck.latency, gain_ms=gain, kernel=top.name, text=(
            f"Raise {name}'s BLOCK from {block} to 1024 with 4 warps: each program moves only {block * 4} bytes"
            f"{', on one warp' if warps == 1 else ''}, so scheduling, not memory, sets the pace. {here}."))
    return Option(action=Action.coalescing, bottleneck=Bottleneck.memory, gain_ms=gain, kernel=top.name, text=(
        f"Fix {name}'s access pattern: with {block or 'a large'} elements per program the block size is not the limit, so "
        f"neighbouring lanes are likely reading addresses far apart; map tl.arange to the contiguous last dimension "
        f"(strides of 1 across a warp), transposing through registers if the problem needs it. {here}."))


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."
