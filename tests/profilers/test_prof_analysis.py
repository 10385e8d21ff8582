from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from kfoundry.profilers.advice import Action
from kfoundry.profilers.analysis import Host, diagnose, diagnose_text
from kfoundry.profilers.textparse import kernel_counters, parse_ncu_csv, parse_profiler_table
from kfoundry.schema import Bottleneck, KernelCounters, KernelShare, ProfileResult, Roofline, State, Timing


def _timing(median_ms: float, cov: float = 0.02) -> Timing:
    return Timing(
        median_ms=median_ms, iqr_ms=median_ms * cov, min_ms=median_ms * 0.95, mean_ms=median_ms, cov=cov, n=20
    )


def _roofline(intensity: float, median_ms: float, nbytes: float = 8e6) -> Roofline:
    # Ridge point of these peaks: 1e12 / 1e11 = 10 FLOP/B.
    flops = intensity * nbytes
    sol_ms = max(flops / 1e12, nbytes / 1e11) * 1e3
    return Roofline(
        flops=flops,
        bytes=nbytes,
        arithmetic_intensity=intensity,
        peak_flops=1e12,
        peak_bandwidth=1e11,
        peak_source="measured on test cpu",
        sol_ms=sol_ms,
        achieved_fraction=sol_ms / median_ms,
    )


def _profile(**fields: object) -> ProfileResult:
    base: dict[str, object] = dict(state=State.correct, backend="cpp", device="cpu", duration_s=1.0, run_id="r1")
    return ProfileResult(**{**base, **fields})


def _own(ms: float, share: float = 1.0) -> KernelShare:
    return KernelShare(name="cpp::scale", time_ms=ms, share=share, calls=1, own=True)


HOST = Host(cores=4, vector_lanes=8)
SERIAL_LOOP = "for (int64_t i = 0; i < n; ++i) out[i] = 2 * x[i];"


def test_a_memory_bound_kernel_on_one_core_is_told_to_use_all_cores_with_its_bandwidth_and_the_gain() -> None:
    p = _profile(candidate=_timing(1.0), roofline=_roofline(0.25, 1.0), breakdown=[_own(0.95)])

    d = diagnose(p, candidate_source=SERIAL_LOOP, host=HOST)

    assert d.bottleneck is Bottleneck.memory
    assert d.advice is not None and d.advice.action is Action.threads
    # Gains use the lower of the median's share and the profiled 0.95 ms: 8 MB in 0.95 ms is 8.4 GB/s, and four
    # cores reach 33.7 GB/s, so the kernel drops to ~0.24 ms.
    assert "8.4 GB/s" in d.recommendation and "#pragma omp parallel for" in d.recommendation
    assert "saves ~0.712 ms of 1.000 ms" in d.recommendation
    assert any("ridge 10" in e for e in d.evidence)


def test_high_intensity_profile_is_compute_bound() -> None:
    p = _profile(candidate=_timing(10.0), roofline=_roofline(100.0, 10.0), breakdown=[_own(9.5)])

    assert diagnose(p, host=HOST).bottleneck is Bottleneck.compute


def test_library_ops_beside_the_kernel_of_a_memory_bound_problem_get_a_fusion_recommendation() -> None:
    breakdown = [
        _own(0.5, 0.5),
        KernelShare(name="aten::add_", time_ms=0.3, share=0.3, calls=1, own=False),
        KernelShare(name="aten::relu", time_ms=0.2, share=0.2, calls=1, own=False),
    ]
    p = _profile(candidate=_timing(1.0), roofline=_roofline(0.25, 1.0), breakdown=breakdown)

    d = diagnose(p, candidate_source="#pragma omp parallel for simd\n" + SERIAL_LOOP, host=HOST)

    assert d.advice is not None and d.advice.action is Action.fusion
    assert d.recommendation.startswith("Fuse scale, add_, relu into one kernel")
    assert "saves ~0.500 ms of 1.000 ms" in d.recommendation
    assert d.bottleneck is Bottleneck.memory


def test_cpp_source_without_openmp_gets_a_parallelisation_recommendation() -> None:
    p = _profile(candidate=_timing(1.0), roofline=_roofline(0.25, 1.0), breakdown=[_own(0.95)])

    d = diagnose(p, candidate_source=SERIAL_LOOP, host=HOST)

    assert "#pragma omp parallel for" in d.recommendation


def test_a_tiny_cpu_call_with_nothing_left_to_gain_is_told_to_stop() -> None:
    p = _profile(candidate=_timing(0.008), breakdown=[_own(0.006)])

    d = diagnose(p, candidate_source="#pragma omp parallel for\n" + SERIAL_LOOP, host=HOST)

    assert d.advice is not None and d.advice.action is Action.stop
    assert d.bottleneck is Bottleneck.host_overhead


def test_a_short_gpu_call_of_several_launches_is_told_to_fuse_them() -> None:
    breakdown = [KernelShare(name=f"k{i}", time_ms=0.0008, share=0.25, calls=1, own=True) for i in range(4)]
    p = _profile(device="cuda:0", backend="triton", candidate=_timing(0.004), breakdown=breakdown)

    d = diagnose(p)

    assert d.bottleneck is Bottleneck.launch_overhead
    assert "Fuse the 4 kernel launches" in d.recommendation


def test_noisy_timings_are_flagged_in_the_evidence() -> None:
    p = _profile(candidate=_timing(1.0, cov=0.3), roofline=_roofline(0.25, 1.0), breakdown=[_own(0.95)])

    assert any("noisy" in e for e in diagnose(p).evidence)


def test_with_nothing_worth_changing_a_noisy_profile_is_told_to_measure_again_not_to_keep_the_kernel() -> None:
    from kfoundry.profilers import rules
    from kfoundry.profilers.digest import digest

    def stop_text(cov: float) -> str:
        return rules.stop(digest(_profile(candidate=_timing(1.0, cov=cov), roofline=_roofline(0.25, 1.0), breakdown=[_own(0.95)]))).text

    assert stop_text(0.05).startswith("Keep ")
    noisy = stop_text(0.72)
    assert noisy.startswith("Measure ") and "CoV 72%" in noisy and "quieter host" in noisy


def test_dram_counters_near_peak_say_only_fewer_bytes_help() -> None:
    counters = [KernelCounters(name="scale_kernel", duration_us=900.0, dram_throughput_pct=88.0, sm_throughput_pct=15.0)]
    p = _profile(
        device="cuda:0",
        backend="cuda",
        candidate=_timing(1.0),
        counters=counters,
        breakdown=[KernelShare(name="scale_kernel", time_ms=0.9, share=1.0, calls=1, own=True)],
    )

    d = diagnose(p)

    assert d.bottleneck is Bottleneck.memory
    assert "88%" in d.recommendation and "fewer bytes" in d.recommendation


def test_digest_is_compact_and_names_times_speedup_and_top_kernels() -> None:
    p = _profile(
        candidate=_timing(1.0),
        eager=_timing(2.0),
        speedup_vs_eager=2.0,
        roofline=_roofline(0.25, 1.0),
        breakdown=[_own(0.95)],
    )

    digest = diagnose(p, host=HOST).digest

    assert "candidate 1.000 ms" in digest and "2.00x" in digest and "cpp::scale" in digest
    assert len(digest) < 4000


def test_profile_without_measurements_is_unknown() -> None:
    assert diagnose(_profile()).bottleneck is Bottleneck.unknown


def _real_table() -> str:
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
    x = torch.randn(32, 64)
    model(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            with record_function("cpp::fused"):
                model(x)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)


def test_torch_profiler_table_parses_rows_self_times_and_calls() -> None:
    table = parse_profiler_table(_real_table())

    assert table is not None and table.device is None
    addmm = next(r for r in table.rows if r.name == "aten::addmm")
    assert addmm.calls == 3 and addmm.self_cpu_us > 0
    assert any(r.name == "cpp::fused" for r in table.rows)


def test_diagnose_text_reads_a_real_torch_profiler_table() -> None:
    d = diagnose_text(_real_table())

    assert "aten::addmm" in d.digest
    assert "torch.profiler table (cpu)" in d.digest
    assert "matched neither" not in d.recommendation


def _cuda_table(*, pasted: bool) -> str:
    """A key_averages().table() as a CUDA run prints it (torch's row format), or with alignment lost."""
    widths = [55] + [12] * 10
    header = [
        "Name",
        "Self CPU %",
        "Self CPU",
        "CPU total %",
        "CPU total",
        "CPU time avg",
        "Self CUDA",
        "Self CUDA %",
        "CUDA total",
        "CUDA time avg",
        "# of Calls",
    ]
    rows = [
        [
            "aten::addmm",
            "2.00%",
            "100.000us",
            "3.00%",
            "150.000us",
            "50.000us",
            "900.000us",
            "90.00%",
            "900.000us",
            "300.000us",
            "3",
        ],
        [
            "ampere_sgemm_64x32_nn",
            "0.00%",
            "0.000us",
            "0.00%",
            "0.000us",
            "0.000us",
            "900.000us",
            "90.00%",
            "900.000us",
            "300.000us",
            "3",
        ],
        [
            "void at::native::vectorized_elementwise_kernel<4, ...",
            "0.00%",
            "0.000us",
            "0.00%",
            "0.000us",
            "0.000us",
            "60.000us",
            "6.00%",
            "60.000us",
            "20.000us",
            "3",
        ],
        [
            "my_relu_kernel",
            "0.00%",
            "0.000us",
            "0.00%",
            "0.000us",
            "0.000us",
            "40.000us",
            "4.00%",
            "40.000us",
            "13.333us",
            "3",
        ],
    ]
    rule = "  ".join("-" * w for w in widths)
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    lines = [
        rule,
        fmt.format(*header),
        rule,
        *(fmt.format(*r) for r in rows),
        rule,
        "Self CPU time total: 5.000ms",
        "Self CUDA time total: 1.000ms",
    ]
    return "\n".join(line.lstrip() if pasted else line for line in lines)


def test_cuda_table_keeps_names_with_spaces_and_counts_only_kernel_rows() -> None:
    table = parse_profiler_table(_cuda_table(pasted=False))

    assert table is not None and table.device == "CUDA"
    assert [r.name for r in table.rows][2] == "void at::native::vectorized_elementwise_kernel<4, ..."
    assert [r.self_device_us for r in table.rows] == [900.0, 900.0, 60.0, 40.0]


def test_cuda_table_diagnosis_names_the_library_gemm_that_dominates() -> None:
    d = diagnose_text(_cuda_table(pasted=False))

    assert "torch.profiler table (cuda)" in d.digest
    assert "90.0%" in d.digest and "aten::addmm" not in d.digest
    assert "ampere_sgemm_64x32_nn" in d.recommendation


def test_table_whose_alignment_was_lost_in_pasting_still_parses() -> None:
    table = parse_profiler_table(_cuda_table(pasted=True))

    assert table is not None
    assert [r.name for r in table.rows] == [
        "aten::addmm",
        "ampere_sgemm_64x32_nn",
        "void at::native::vectorized_elementwise_kernel<4, ...",
        "my_relu_kernel",
    ]
    assert table.rows[3].self_device_us == 40.0


def _ncu_details() -> str:
    """``ncu --csv --page details`` output: one row per (launch, metric), after ncu's own log lines."""
    header = [
        "ID",
        "Process ID",
        "Process Name",
        "Host Name",
        "Kernel Name",
        "Context",
        "Stream",
        "Block Size",
        "Grid Size",
        "Device",
        "CC",
        "Section Name",
        "Metric Name",
        "Metric Unit",
        "Metric Value",
    ]
    scale = ["0", "4242", "python", "box", "scale_kernel", "1", "7", "(256, 1, 1)", "(4096, 1, 1)", "0", "9.0"]
    tiny = ["1", "4242", "python", "box", "tiny_kernel", "1", "7", "(128, 1, 1)", "(1, 1, 1)", "0", "9.0"]
    rows = [
        [*scale, "GPU Speed Of Light Throughput", "DRAM Throughput", "%", "88.12"],
        [*scale, "GPU Speed Of Light Throughput", "Duration", "usecond", "1,210.5"],
        [*scale, "GPU Speed Of Light Throughput", "Compute (SM) Throughput", "%", "12.40"],
        [*scale, "Memory Workload Analysis", "Memory Throughput", "Gbyte/second", "2,950.00"],
        [*scale, "Occupancy", "Achieved Occupancy", "%", "81.3"],
        [*tiny, "GPU Speed Of Light Throughput", "Duration", "usecond", "2.1"],
    ]
    quoted = [",".join(f'"{cell}"' for cell in row) for row in [header, *rows]]
    return "\n".join(["==PROF== Connected to process 4242", *quoted])


_NCU_DETAILS = _ncu_details()


def test_ncu_details_csv_is_parsed_into_canonical_counters() -> None:
    report = parse_ncu_csv(_NCU_DETAILS)

    assert report is not None
    scale = report.kernels["scale_kernel"]
    assert scale == {"dram_pct": 88.12, "duration_us": 1210.5, "sm_pct": 12.4, "occupancy_pct": 81.3, "launches": 1.0}


def test_diagnose_text_classifies_a_dram_saturated_ncu_kernel_as_memory_bound() -> None:
    d = diagnose_text(_NCU_DETAILS)

    assert d.bottleneck is Bottleneck.memory
    assert any("DRAM 88%" in e for e in d.evidence)
    assert "scale_kernel" in d.recommendation


def test_ncu_raw_csv_with_a_units_row_converts_durations_to_microseconds() -> None:
    raw = (
        '"ID","Kernel Name","gpu__time_duration.sum","sm__throughput.avg.pct_of_peak_sustained_elapsed"\n'
        '"","","nsecond","%"\n'
        '"0","gemm_kernel","5,000","91.5"\n'
        '"1","gemm_kernel","3,000","89.5"\n'
    )

    report = parse_ncu_csv(raw)

    assert report is not None
    assert report.kernels["gemm_kernel"] == {"duration_us": 8.0, "sm_pct": 90.5, "launches": 2.0}
    assert diagnose_text(raw).bottleneck is Bottleneck.compute


def test_unrecognised_text_is_unknown_and_names_the_accepted_formats() -> None:
    d = diagnose_text("my kernel seems slow, about 3 ms per call")

    assert d.bottleneck is Bottleneck.unknown
    assert "key_averages().table()" in d.recommendation and "ncu --csv" in d.recommendation


def test_a_real_h200_ncu_report_parses_into_typed_counters() -> None:
    text = (Path(__file__).parent / "data" / "ncu_h200_softmax.csv").read_text()
    report = parse_ncu_csv(text)
    assert report is not None
    (top,) = kernel_counters(report)
    assert top.name == "_softmax_kernel"
    assert top.duration_us == pytest.approx(4.384)
    assert top.dram_throughput_pct == pytest.approx(2.62) and top.sm_throughput_pct == pytest.approx(2.05)
    assert top.registers_per_thread == 128 and top.block_size == 128 and top.grid_size == 16
    assert top.achieved_occupancy_pct == pytest.approx(6.25) and top.l2_hit_rate_pct == pytest.approx(54.59)
    d = diagnose_text(text)
    assert d.bottleneck is not Bottleneck.unknown and "_softmax_kernel" in d.digest
