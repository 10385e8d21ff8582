from __future__ import annotations

import json

import pytest
import torch

from kfoundry import config
from kfoundry.profilers import roofline as rl
from kfoundry.profilers.peaks import GPU_PEAKS, DevicePeaks, gpu_peaks, roofline
from kfoundry.profilers.roofline import analyze_problem, cpu_peaks


def test_analyze_problem_counts_linear_flops_and_compulsory_bytes_exactly() -> None:
    m, k, n = 16, 64, 32
    analysis = analyze_problem(torch.nn.Linear(k, n), [torch.randn(m, k)])

    assert analysis.flops == 2 * m * n * k
    assert analysis.bytes == 4 * (m * k + n * k + n + m * n)
    assert analysis.arithmetic_intensity == pytest.approx(analysis.flops / analysis.bytes)
    assert analysis.parameter_count == n * k + n
    assert (analysis.input_shapes, analysis.output_shapes) == ([[m, k]], [[m, n]])
    assert analysis.input_dtypes == ["float32"]
    addmm = next(op for op in analysis.ops if op.op == "aten::addmm")
    assert (addmm.count, addmm.flops) == (1, 2 * m * n * k)


def test_analyze_problem_prices_speed_of_light_for_every_known_gpu() -> None:
    analysis = analyze_problem(torch.nn.Linear(64, 32), [torch.randn(16, 64)])
    h100 = GPU_PEAKS["H100 SXM"]

    assert set(analysis.sol_ms) == set(GPU_PEAKS)
    expected = max(analysis.flops / h100.tf32, analysis.bytes / h100.bandwidth) * 1e3
    assert analysis.sol_ms["H100 SXM"] == pytest.approx(expected)


def test_analyze_problem_records_each_aten_op_once_with_its_call_count() -> None:
    class TwoAdds(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x + 1) + 2

    analysis = analyze_problem(TwoAdds(), [torch.randn(8, dtype=torch.float64)])

    add = next(op for op in analysis.ops if op.op == "aten::add")
    assert (add.count, add.dtypes, add.input_shapes) == (2, ["float64"], [[8]])
    assert analysis.flops == 0


_PEAKS = DevicePeaks(name="toy", fp32=1e12, tf32=4e12, bf16=8e12, fp16=8e12, bandwidth=1e11, source="test")


def test_roofline_takes_the_slower_of_compute_and_memory_time() -> None:
    r = roofline(flops=8e12, nbytes=1e9, peaks=_PEAKS, dtype="bfloat16", median_ms=2000.0)

    assert r.sol_ms == pytest.approx(1000.0)  # 8e12 / 8e12 s of math vs 0.01 s of traffic
    assert r.achieved_fraction == pytest.approx(0.5)
    assert r.arithmetic_intensity == pytest.approx(8000.0)
    assert r.peak_flops == 8e12


def test_roofline_prices_fp32_at_tensor_core_rate_and_memory_bound_problems_by_bandwidth() -> None:
    r = roofline(flops=1e6, nbytes=1e9, peaks=_PEAKS, dtype="torch.float32", median_ms=None)

    assert r.peak_flops == 4e12
    assert r.sol_ms == pytest.approx(10.0)
    assert r.achieved_fraction is None


def test_strict_fp32_speed_of_light_allows_compensated_3xtf32_while_kernels_are_measured_against_the_fma_peak() -> None:
    # tf32 / 3 = 1.33e12 beats the 1e12 FMA peak: an honest 3xTF32 GEMM must never read as faster than light.
    r = roofline(flops=4e12, nbytes=1e6, peaks=_PEAKS, dtype="float32", median_ms=3000.0, policy="fp32")

    assert r.peak_flops == 1e12
    assert r.sol_ms == pytest.approx(3000.0)
    assert r.achieved_fraction == pytest.approx(1.0)
    slow_tensor_cores = DevicePeaks(name="toy", fp32=1e12, tf32=2e12, bf16=4e12, fp16=4e12, bandwidth=1e11, source="test")
    assert roofline(flops=4e12, nbytes=1e6, peaks=slow_tensor_cores, dtype="float32", median_ms=None, policy="fp32").sol_ms == pytest.approx(4000.0)


def test_fp8_falls_back_to_fp16_peak_on_devices_without_fp8() -> None:
    assert _PEAKS.flops_for("float8_e4m3fn") == 8e12
    assert GPU_PEAKS["H100 SXM"].flops_for("float8_e4m3fn") == GPU_PEAKS["H100 SXM"].fp8


@pytest.mark.parametrize(
    ("device_name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
        ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ],
)
def test_gpu_peaks_matches_torch_device_names(device_name: str, key: str) -> None:
    assert gpu_peaks(device_name) is GPU_PEAKS[key]


def test_gpu_peaks_is_none_for_an_unknown_device() -> None:
    assert gpu_peaks("Tesla T4") is None


def test_gpu_peak_table_holds_dense_numbers_in_flops_and_bytes_per_second() -> None:
    h100 = GPU_PEAKS["H100 SXM"]

    assert h100.bf16 == pytest.approx(989.4e12)  # dense; the datasheet headline 1979 is sparse
    assert h100.bandwidth == pytest.approx(3.35e12)
    assert all(p.bf16 >= p.fp32 and p.bandwidth > 1e11 for p in GPU_PEAKS.values())


@pytest.fixture
def tmp_home(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KFOUNDRY_HOME", str(tmp_path))
    config.settings.cache_clear()
    yield tmp_path
    config.settings.cache_clear()


def test_cpu_peaks_are_measured_once_then_served_from_the_cache(tmp_home, monkeypatch: pytest.MonkeyPatch) -> None:
    first = cpu_peaks()
    cache_file = tmp_home / "cache" / "cpu_peaks.json"

    def refuse(*_: object) -> DevicePeaks:
        raise AssertionError("measured again")

    monkeypatch.setattr(rl, "_measure_cpu_peaks", refuse)
    second = cpu_peaks()

    assert cache_file.exists()
    assert second == first
    assert first.source.startswith("measured on ")
    assert first.fp32 > 1e8 and first.bandwidth > 1e8
    assert next(iter(json.loads(cache_file.read_text()).values()))["fp32"] == first.fp32
