from __future__ import annotations

import pytest
import torch
from torch.profiler import record_function

from kfoundry.profilers.breakdown import op_breakdown, shares


def _forward() -> None:
    a = torch.randn(64, 64)
    with record_function("cpp::x"):
        # Host work inside the range stands in for a native kernel: it is the range's self time.
        sum(i * i for i in range(20_000))
    torch.relu(torch.mm(a, a))


def test_op_breakdown_marks_backend_ranges_own_and_aten_ops_library() -> None:
    rows = op_breakdown(_forward, is_own=lambda name: name.startswith("cpp::"), calls=2)
    by_name = {r.name: r for r in rows}

    assert by_name["cpp::x"].own is True
    assert by_name["cpp::x"].calls == 1
    assert by_name["aten::mm"].own is False
    assert sum(r.share for r in rows) == pytest.approx(1.0)
    assert [r.time_ms for r in rows] == sorted((r.time_ms for r in rows), reverse=True)
    assert not any(r.name.startswith("ProfilerStep") for r in rows)


def test_op_breakdown_folds_rows_past_top_into_other_entries_that_keep_own_and_library_apart() -> None:
    rows = op_breakdown(_forward, is_own=lambda name: name.startswith("cpp::"), calls=1, top=1)

    folded = {r.name: r for r in rows[1:]}
    assert set(folded) <= {"other", "other (own)"} and "other" in folded
    assert folded["other"].own is False
    assert all(r.own for name, r in folded.items() if name == "other (own)")
    assert sum(r.share for r in rows) == pytest.approx(1.0)


def test_shares_fold_allowed_library_rows_separately_so_coverage_stays_exact() -> None:
    rows = shares([("own_k", 500.0, 1), ("mm_kernel", 300.0, 1), ("copy_kernel", 150.0, 1), ("own_small", 50.0, 1)],
                  calls=1, is_own=lambda n: n.startswith("own"), top=1, is_allowed=lambda n: n == "mm_kernel")

    by_name = {r.name: r for r in rows}
    assert by_name["other (allowed)"].allowed and not by_name["other (allowed)"].own
    assert by_name["other (own)"].own and by_name["other (own)"].share == pytest.approx(0.05)
    assert by_name["other"].share == pytest.approx(0.15) and not by_name["other"].allowed
    assert sum(r.share for r in rows if r.own or r.allowed) == pytest.approx(0.85)


def test_shares_report_time_and_calls_per_forward_call() -> None:
    rows = shares([("k", 3000.0, 6), ("aten::add", 1000.0, 3)], calls=3, is_own=lambda n: n == "k")

    assert [(r.name, r.time_ms, r.calls, r.share, r.own) for r in rows] == [
        ("k", 1.0, 2, 0.75, True),
        ("aten::add", pytest.approx(1 / 3), 1, 0.25, False),
    ]
