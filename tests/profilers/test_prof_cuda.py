"""CUDA paths of the timing and breakdown code; skipped on hosts without an NVIDIA GPU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch.profiler import record_function

from kfoundry.profilers.breakdown import op_breakdown
from kfoundry.profilers.peaks import gpu_peaks
from kfoundry.profilers.summary import summarize
from kfoundry.profilers.timing import bench, cache_flusher, track_streams

pytestmark = pytest.mark.gpu


def test_cuda_flusher_overwrites_at_least_twice_the_l2() -> None:
    flush = cache_flusher("cuda")
    flush()

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    assert flush.buffer.is_cuda
    assert flush.buffer.numel() * flush.buffer.element_size() >= 2 * l2


def test_work_left_on_a_side_stream_is_billed_to_the_call() -> None:
    track_streams()  # the harness does this before candidate code is imported
    x = torch.randn(2048, 2048, device="cuda")
    side = torch.cuda.Stream()

    def same_stream(_: Sequence[Any]) -> None:
        x @ x

    def hidden(_: Sequence[Any]) -> None:
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            x @ x

    samples = bench({"same": same_stream, "hidden": hidden}, [(0,), (1,)], reps=10, device="cuda")

    assert summarize(samples["hidden"]).median_ms > 0.5 * summarize(samples["same"]).median_ms


def test_cuda_breakdown_marks_kernels_launched_inside_an_own_range_as_own() -> None:
    x = torch.randn(512, 512, device="cuda")

    def forward() -> None:
        with record_function("triton::fused"):
            y = x @ x
        torch.relu(y)

    rows = op_breakdown(forward, is_own=lambda name: name.startswith("triton::"), device="cuda")

    assert any(r.own for r in rows)
    assert any(not r.own for r in rows)
    assert sum(r.share for r in rows) == pytest.approx(1.0)


def test_this_gpu_is_in_the_peak_table() -> None:
    assert gpu_peaks(torch.cuda.get_device_name()) is not None
