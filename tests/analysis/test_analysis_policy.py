"""The precision policy and the backend kind bound what may be recommended, whatever the numbers say."""

from __future__ import annotations

from pathlib import Path

from kfoundry.profilers.advice import Action, Option, choose
from kfoundry.profilers.analysis import diagnose
from kfoundry.profilers.digest import digest
from kfoundry.profilers.peaks import GPU_PEAKS, roofline
from kfoundry.schema import Bottleneck, KernelShare, ProfileResult, State, Timing

CASES = Path(__file__).resolve().parents[2] / "benchmarks" / "analysis_cases"
FMA_GEMM = (CASES / "triton" / "gemm_fma.py").read_text()
H100 = GPU_PEAKS["H100 SXM"]
GEMM_FLOPS, GEMM_BYTES = 2 * 4096**3, 3 * 4096 * 4096 * 4


def _timing(median_ms: float) -> Timing:
    return Timing(median_ms=median_ms, iqr_ms=0.01, min_ms=median_ms, mean_ms=median_ms, cov=0.01, n=20)


def _gemm(policy: str, candidate_ms: float = 9.0, library_ms: float = 2.7) -> ProfileResult:
    """An fp32 4096^3 GEMM + ReLU on an H100: the candidate's FMA kernel against eager's library GEMM."""
    peak = {"strict": "fp32", "tf32": "tf32", "bf16": "bf16"}[policy]
    return ProfileResult(
        state=State.correct, backend="triton", device="cuda:0", precision=policy, duration_s=1.0, run_id="r",
        candidate=_timing(candidate_ms), eager=_timing(library_ms + 0.1),
        breakdown=[KernelShare(name="_linear_relu_fma_kernel", time_ms=candidate_ms - 0.02, share=1.0, calls=1, own=True)],
        baseline_breakdown=[
            KernelShare(name="sm90_xmma_gemm_f32f32_f32f32_f32_nt_n_tilesize128x128x32_cublas", time_ms=library_ms, share=0.98, calls=1, own=False),
            KernelShare(name="void at::native::vectorized_elementwise_kernel<4, clamp_min>", time_ms=0.05, share=0.02, calls=1, own=False),
        ],
        roofline=roofline(GEMM_FLOPS, GEMM_BYTES, H100, "float32", candidate_ms, policy=peak),
    )


def test_under_strict_an_fp32_fma_gemm_is_measured_against_the_fma_peak_and_told_to_use_ieee_dot() -> None:
    d = diagnose(_gemm("strict"), FMA_GEMM)

    assert d.advice.action is Action.main_loop
    assert 'input_precision="ieee"' in d.recommendation
    assert "67.0 TFLOP/s fp32 FMA" in d.digest
    assert not any(word in d.recommendation.lower() for word in ("tensor core", "tf32", "bf16"))
    # 2 * 4096^3 FLOP in the library's 2.7 ms is 50.9 TFLOP/s: matching it saves 9.0 - 2.7 = 6.3 ms.
    assert "saves ~6.280 ms of 9.000 ms" in d.recommendation


def test_where_the_policy_allows_bf16_the_same_kernel_is_told_to_use_tensor_cores() -> None:
    d = diagnose(_gemm("bf16"), FMA_GEMM)

    assert d.advice.action is Action.precision
    assert "tensor core" in d.recommendation and "bf16" in d.recommendation
    assert "989.4 TFLOP/s bf16/fp16 tensor core" in d.digest


def test_an_option_that_asks_for_narrower_math_under_strict_is_dropped_with_the_reason() -> None:
    d = digest(_gemm("strict"))
    tf32 = Option(action=Action.main_loop, bottleneck=Bottleneck.compute, gain_ms=5.0, text="Use tf32 tl.dot")
    fallback = Option(action=Action.stop, bottleneck=Bottleneck.compute, gain_ms=0.0, text="stop")

    advice = choose(d, [tf32], tried=set(), stop=fallback)

    assert advice.action is Action.stop
    assert advice.skipped == ["main_loop: not allowed for a gpu backend under strict"]


def test_a_gpu_action_is_never_given_to_a_cpu_backend() -> None:
    cpu = ProfileResult(
        state=State.correct, backend="cpp", device="cpu", duration_s=1.0, run_id="r", candidate=_timing(10.0),
        breakdown=[KernelShare(name="cpp::k", time_ms=9.0, share=1.0, calls=1, own=True)],
    )
    coalesce = Option(action=Action.coalescing, bottleneck=Bottleneck.memory, gain_ms=8.0, text="Coalesce the loads")
    fallback = Option(action=Action.stop, bottleneck=Bottleneck.unknown, gain_ms=0.0, text="stop")

    advice = choose(digest(cpu), [coalesce], tried=set(), stop=fallback)

    assert advice.action is Action.stop and advice.skipped == ["coalescing: not allowed for a cpu backend under strict"]


def test_a_near_tie_goes_to_the_surer_change_and_a_small_gain_to_stopping() -> None:
    d = digest(_gemm("strict"))
    fallback = Option(action=Action.stop, bottleneck=Bottleneck.compute, gain_ms=0.0, text="stop")
    tiles = Option(action=Action.tile_config, bottleneck=Bottleneck.compute, gain_ms=5.0, text="tiles")
    loop = Option(action=Action.main_loop, bottleneck=Bottleneck.compute, gain_ms=4.6, text="loop")
    small = Option(action=Action.tile_config, bottleneck=Bottleneck.compute, gain_ms=0.5, text="tiles")

    assert choose(d, [tiles, loop], tried=set(), stop=fallback).action is Action.main_loop
    assert choose(d, [small], tried=set(), stop=fallback).action is Action.stop
