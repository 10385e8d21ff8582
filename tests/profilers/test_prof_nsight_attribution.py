"""Device time judged from Nsight Compute's record, made outside the sandbox: library kernels by name, never by the candidate's say."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from kfoundry.profilers.libraries import is_library_kernel, name_key
from kfoundry.schema import AttributionStatus, DeviceAttribution
from kfoundry.tools.counters import MAX_LAUNCHES, device_attribution
from kfoundry.verify.guardrails import Guardrails
from kfoundry.verify.verdict import nsight_findings

DATA = Path(__file__).parent / "data"
HEADER = ["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream", "Block Size", "Grid Size", "Device", "CC",
          "Section Name", "Metric Name", "Metric Unit", "Metric Value"]
ASKED = Guardrails(nsight_attribution=True)
CUBLAS = "sm90_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize128x128x8_stage3_warpsize2x2x1_ffma_aligna4_alignc4_execute_kernel__5x_cublas"


def _report(launches: list[tuple[str, float]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL)
    writer.writerow(HEADER)
    for i, (name, us) in enumerate(launches):
        writer.writerow([str(i), "2", "python3.12", "127.0.0.1", name, "1", "7", "(128, 1, 1)", "(64, 1, 1)", "0", "9.0",
                         "Command line profiler metrics", "gpu__time_duration.sum", "usecond", f"{us:.2f}"])
    return "==PROF== Connected to process 2 (/usr/bin/python3.12)\n" + out.getvalue()


@pytest.mark.parametrize("name", [
    CUBLAS, "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", "void at::vectorized_elementwise_kernel<4, at::AUnaryFunctor<float>>(int, T2, T3)",
    "void gemv2T_kernel_val<int, int, float, float, float, float, 128, 16, 4, 4, false, false>(T6)", "triton_poi_fused_mul_sigmoid_0",
    "void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_128x128_16x5_tn_align4>(T1::Params)", "cudnn::bn_fw_tr_1C11_kernel_NCHW",
])
def test_vendor_and_framework_kernels_are_library_code(name: str) -> None:
    assert is_library_kernel(name)


@pytest.mark.parametrize("name", [
    "_swish_kernel", "matmul_kernel", "gemm_kernel", "dot_kernel", "kernel_cutlass_kernel_swish_0", "main_kernel", "_helion_swish",
    "fused_softmax(const float *, float *, int)", "matmul_kernel_cublas_like",
])
def test_user_kernels_whatever_they_are_called_are_not_library_code(name: str) -> None:
    assert not is_library_kernel(name)


def test_a_name_the_reference_launched_is_library_code_even_when_no_pattern_knows_it() -> None:
    odd = "void some_vendor_kernel<float>(float *, int)"
    assert not is_library_kernel(odd)
    assert is_library_kernel(odd, frozenset({name_key(odd)}))


def test_a_real_h200_report_of_a_torch_gemm_has_no_own_device_time() -> None:
    judged = device_attribution((DATA / "ncu_h200_times_cublas.csv").read_text(), frozenset(), frozenset())
    assert judged.status is AttributionStatus.measured
    assert judged.own_share == 0.0
    assert judged.launches == 5
    assert any("cublas" in k.name and not k.own for k in judged.kernels)
    assert judged.kernel_ms is not None and judged.kernel_ms > 0


def test_the_share_is_own_kernel_time_over_all_kernel_time() -> None:
    judged = device_attribution(_report([("_swish_kernel", 30.0), (CUBLAS, 60.0), ("_swish_kernel", 10.0)]), frozenset(), frozenset())
    assert judged.own_share == pytest.approx(0.4)
    assert judged.kernel_ms == pytest.approx(0.1)
    assert judged.launches == 3


def test_library_kernels_the_caller_allows_count_with_the_own_ones() -> None:
    judged = device_attribution(_report([("_swish_kernel", 30.0), (CUBLAS, 60.0)]), frozenset(), frozenset({name_key(CUBLAS)}))
    assert judged.own_share == pytest.approx(1.0)
    assert [k.allowed for k in judged.kernels if not k.own] == [True]


def test_a_call_that_fills_the_launch_record_is_not_judged() -> None:
    judged = device_attribution(_report([("_tiny_kernel", 1.0)] * MAX_LAUNCHES), frozenset(), frozenset())
    assert judged.status is AttributionStatus.failed
    assert str(MAX_LAUNCHES) in judged.reason


def test_a_report_without_kernels_is_a_failed_run() -> None:
    assert device_attribution("==PROF== Disconnected from process 2\n", frozenset(), frozenset()).status is AttributionStatus.failed


def test_a_library_share_below_the_floor_is_a_blocking_kernel_coverage_finding_naming_the_library() -> None:
    judged = device_attribution(_report([("_token_kernel", 5.0), (CUBLAS, 95.0)]), frozenset(), frozenset())
    found = nsight_findings(judged, ASKED, candidate_ms=0.2)
    assert [f.code for f in found] == ["kernel_coverage"] and found[0].blocking
    assert "outside the sandbox" in found[0].message and "sm90_xmma_gemm" in found[0].message


def test_an_own_share_above_the_floor_passes() -> None:
    judged = device_attribution(_report([("_gemm_kernel", 95.0), ("void at::native::vectorized_elementwise_kernel<4>(int)", 5.0)]), frozenset(), frozenset())
    assert nsight_findings(judged, ASKED, candidate_ms=0.2) == []


def test_kernels_longer_than_the_candidates_reported_call_are_a_timer_integrity_finding() -> None:
    judged = device_attribution(_report([("_gemm_kernel", 2000.0)]), frozenset(), frozenset())
    found = nsight_findings(judged, ASKED, candidate_ms=0.5)
    assert [f.code for f in found] == ["timer_integrity"]
    assert nsight_findings(judged, ASKED, candidate_ms=2.1) == []


def test_asked_for_where_no_ncu_is_installed_is_a_blocking_kernel_coverage_finding() -> None:
    missing = DeviceAttribution(status=AttributionStatus.unavailable, reason="ncu (Nsight Compute) is not installed or not on PATH")
    found = nsight_findings(missing, ASKED, candidate_ms=1.0)
    assert [f.code for f in found] == ["kernel_coverage"] and found[0].blocking and "not installed" in found[0].message


def test_not_asked_for_there_is_nothing_to_judge() -> None:
    assert Guardrails().nsight_attribution is False
    assert nsight_findings(None, Guardrails(), candidate_ms=1.0) == []


def test_a_run_made_but_not_judgeable_fails_closed() -> None:
    failed = DeviceAttribution(status=AttributionStatus.failed, reason="the candidate's calls under Nsight Compute were not all correct")
    found = nsight_findings(failed, ASKED, candidate_ms=1.0)
    assert [f.code for f in found] == ["kernel_coverage"] and "not all correct" in found[0].message


def test_the_kernel_coverage_rule_turned_off_turns_the_nsight_finding_off_too() -> None:
    judged = device_attribution(_report([("_token_kernel", 5.0), (CUBLAS, 95.0)]), frozenset(), frozenset())
    found = nsight_findings(judged, Guardrails(nsight_attribution=True, rules={"kernel_coverage": "off"}), candidate_ms=0.2)
    assert found == []
