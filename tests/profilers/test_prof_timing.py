from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from kfoundry.profilers import timing
from kfoundry.profilers.summary import summarize
from kfoundry.profilers.timing import bench, cache_flusher, input_sets


def test_summarize_reports_median_iqr_min_mean_and_cov_of_known_samples() -> None:
    t = summarize([5.0, 1.0, 3.0, 2.0, 4.0])

    assert (t.median_ms, t.iqr_ms, t.min_ms, t.mean_ms, t.n) == (3.0, 2.0, 1.0, 3.0, 5)
    assert t.cov == pytest.approx(1.5811388 / 3.0)


def test_summarize_of_one_sample_has_no_spread() -> None:
    t = summarize([2.5])

    assert (t.median_ms, t.iqr_ms, t.cov, t.n) == (2.5, 0.0, 0.0, 1)


def test_summarize_refuses_an_empty_sample_list() -> None:
    with pytest.raises(ValueError):
        summarize([])


def _recorder(log: list[tuple[str, int]], name: str):
    def run(inputs: Sequence[Any]) -> None:
        log.append((name, inputs[0]))

    return run


def test_bench_interleaves_contenders_in_rotating_order_with_rotating_input_sets() -> None:
    log: list[tuple[str, int]] = []
    sets = [(0,), (1,), (2,)]
    samples = bench({"a": _recorder(log, "a"), "b": _recorder(log, "b")}, sets, warmup=0, reps=4)

    assert [name for name, _ in log] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [s for _, s in log] == [(r * 2 + k) % 3 for r in range(4) for k in range(2)]
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4}


def test_bench_warms_up_then_flushes_before_every_timed_call() -> None:
    log: list[str] = []
    contenders = {"a": lambda _: log.append("a"), "b": lambda _: log.append("b")}

    bench(contenders, [(0,), (1,)], warmup=2, reps=3, flush=lambda: log.append("flush"))

    assert log[:4] == ["a", "a", "b", "b"]
    timed = log[4:]
    assert timed[0::2] == ["flush"] * 6
    assert sorted(timed[1::2]) == ["a"] * 3 + ["b"] * 3


def test_bench_measures_a_slower_contender_as_slower() -> None:
    a = torch.randn(96, 96)

    def fast(_: Sequence[Any]) -> None:
        a.sum()

    def slow(_: Sequence[Any]) -> None:
        for _ in range(30):
            a @ a

    samples = bench({"fast": fast, "slow": slow}, [(0,), (1,)], warmup=1, reps=7)

    assert summarize(samples["slow"]).median_ms > 3 * summarize(samples["fast"]).median_ms


def test_bench_refuses_to_run_without_input_sets() -> None:
    with pytest.raises(ValueError):
        bench({"a": lambda _: None}, [])


def test_input_sets_are_distinct_buffers_limited_by_the_memory_budget() -> None:
    def make() -> tuple[torch.Tensor, int]:
        return torch.randn(1 << 18), 7  # 1 MiB of float32 plus a non-tensor argument

    sets = input_sets(make, count=10, budget_bytes=3 << 20)

    assert len(sets) == 3
    assert len({s[0].data_ptr() for s in sets}) == 3
    assert not torch.equal(sets[0][0], sets[1][0])


def test_input_sets_keeps_two_sets_even_over_budget_and_stops_at_count() -> None:
    make = lambda: (torch.randn(1024),)  # noqa: E731

    assert len(input_sets(make, count=8, budget_bytes=1)) == 2
    assert len(input_sets(make, count=4)) == 4


def test_cache_flusher_writes_a_buffer_twice_the_last_level_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timing, "llc_bytes", lambda: 1 << 20)
    flush = cache_flusher("cpu")

    flush()
    flush()

    assert flush.buffer.numel() * flush.buffer.element_size() == 2 << 20
    assert float(flush.buffer[0]) == 2.0


def test_llc_size_strings_from_sysfs_parse_to_bytes() -> None:
    assert [timing._parse_size(s) for s in ("48K\n", "2048K", "32M", "1G", "512")] == [
        48 << 10,
        2 << 20,
        32 << 20,
        1 << 30,
        512,
    ]
    assert timing.llc_bytes() > 0
