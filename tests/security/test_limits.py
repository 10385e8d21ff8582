"""A job's byte budget: what a candidate may hand back per call and leave in the exchange folder, scaled to the reference's own tensors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from kfoundry.runner.budget import (
    EXCHANGE_SLACK,
    MIB,
    REPLY_FLOOR,
    DirectoryUsage,
    JobBudget,
    check_exchange,
    check_reply,
    directory_usage,
    job_budget,
    tensor_bytes,
    value_bytes,
)
from kfoundry.runner.wire import PlainValue, TensorRef


def ref(dtype: str, *shape: int) -> TensorRef:
    return TensorRef(dtype=dtype, shape=list(shape), storage="file", file="out.bin")


# -- sizes ----------------------------------------------------------------------------------
def test_every_dtype_torch_names_has_the_itemsize_torch_gives_it() -> None:
    names = {n: d for n in dir(torch) if isinstance(d := getattr(torch, n), torch.dtype) and str(d) == f"torch.{n}"}

    assert {n: tensor_bytes(n, [1]) for n in names} == {n: d.itemsize for n, d in names.items()}


def test_an_unknown_dtype_counts_as_the_widest_so_a_made_up_name_never_shrinks_a_reply() -> None:
    assert tensor_bytes("float1024", [10]) == 160


def test_value_bytes_sums_the_tensors_and_plain_values_are_free() -> None:
    values = [ref("float32", 4, 8), PlainValue(value=3, type_name="int"), ref("bfloat16", 10), ref("int8", 0, 5)]

    assert value_bytes(values) == 4 * 8 * 4 + 10 * 2


# -- the budget -----------------------------------------------------------------------------
def test_a_reply_may_be_twice_the_references_outputs() -> None:
    assert job_budget(input_bytes=0, output_bytes=64 * MIB).reply_bytes == 128 * MIB


def test_a_reply_may_always_be_one_mebibyte_however_small_the_references_outputs() -> None:
    assert job_budget(input_bytes=0, output_bytes=4).reply_bytes == REPLY_FLOOR == MIB


def test_an_honest_job_with_every_slot_full_fits_the_exchange_cap_with_room_to_spare() -> None:
    params, inputs, outputs, slots = 300 * MIB, 40 * MIB, 20 * MIB, 3
    budget = job_budget(input_bytes=inputs, output_bytes=outputs, parameter_bytes=params, slots=slots)

    honest = params + slots * (inputs + outputs)

    assert budget.exchange_bytes >= 2 * honest + EXCHANGE_SLACK


def test_the_exchange_cap_grows_with_the_problem_and_the_slots() -> None:
    small = job_budget(input_bytes=MIB, output_bytes=MIB)

    assert job_budget(input_bytes=100 * MIB, output_bytes=MIB).exchange_bytes > small.exchange_bytes
    assert job_budget(input_bytes=MIB, output_bytes=MIB, parameter_bytes=MIB).exchange_bytes > small.exchange_bytes
    assert job_budget(input_bytes=MIB, output_bytes=MIB, slots=3).exchange_bytes > small.exchange_bytes


# -- checking a reply ------------------------------------------------------------------------
def test_a_reply_the_size_of_the_references_outputs_passes() -> None:
    budget = job_budget(input_bytes=0, output_bytes=tensor_bytes("float16", [2048, 1024]))

    assert check_reply([ref("float16", 2048, 1024), PlainValue(value=None, type_name="NoneType")], budget) is None


def test_a_reply_in_a_dtype_four_times_as_wide_as_the_references_is_refused_with_its_size() -> None:
    budget = job_budget(input_bytes=0, output_bytes=tensor_bytes("float16", [2048, 1024]))

    reason = check_reply([ref("float64", 2048, 1024)], budget)

    assert reason is not None and str(2048 * 1024 * 8) in reason and str(budget.reply_bytes) in reason


def test_many_small_tensors_are_counted_together() -> None:
    budget = JobBudget(reply_bytes=MIB, exchange_bytes=MIB)

    assert check_reply([ref("float32", 1024)] * 256, budget) is None
    assert check_reply([ref("float32", 1024)] * 257, budget) is not None


def test_a_shape_with_a_negative_size_is_refused() -> None:
    budget = JobBudget(reply_bytes=MIB, exchange_bytes=MIB)

    assert check_reply([ref("float32", 4), ref("float32", -1, 8)], budget) == "output 1 has a negative size in its shape [-1, 8]"


def test_a_huge_shape_is_refused_without_allocating_anything() -> None:
    budget = JobBudget(reply_bytes=MIB, exchange_bytes=MIB)

    assert check_reply([ref("float32", 1 << 40, 1 << 40)], budget) is not None


# -- measuring and checking the exchange folder ------------------------------------------------
def test_directory_usage_counts_allocated_blocks_so_a_sparse_file_costs_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "dense.bin").write_bytes(os.urandom(MIB))
    with open(tmp_path / "sparse.bin", "wb") as sparse:
        sparse.truncate(1 << 30)

    usage = directory_usage(tmp_path)

    assert MIB <= usage.bytes < 2 * MIB
    assert usage.entries == 2 and not usage.truncated and usage.unreadable == 0


def test_directory_usage_walks_subfolders_and_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(os.urandom(4 * MIB))
    exchange = tmp_path / "exchange"
    (exchange / "slot-0").mkdir(parents=True)
    (exchange / "slot-0" / "input.bin").write_bytes(os.urandom(MIB))
    (exchange / "escape").symlink_to(outside)
    (exchange / "file-escape").symlink_to(outside / "big.bin")

    usage = directory_usage(exchange)

    assert MIB <= usage.bytes < 2 * MIB
    assert usage.entries == 4


def test_directory_usage_stops_at_its_entry_limit_and_says_so(tmp_path: Path) -> None:
    for i in range(30):
        (tmp_path / f"{i}.bin").touch()

    usage = directory_usage(tmp_path, max_entries=10)

    assert usage.entries == 10 and usage.truncated


def test_a_folder_that_is_gone_uses_nothing(tmp_path: Path) -> None:
    assert directory_usage(tmp_path / "job-gone") == DirectoryUsage(bytes=0, entries=0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists any folder")
def test_a_folder_the_parent_cannot_list_is_reported_as_unreadable(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    hidden.chmod(0)
    try:
        usage = directory_usage(tmp_path)
    finally:
        hidden.chmod(0o700)

    assert usage.unreadable == 1


def test_an_exchange_folder_within_the_budget_passes_the_check(tmp_path: Path) -> None:
    (tmp_path / "input.bin").write_bytes(os.urandom(MIB))
    budget = job_budget(input_bytes=MIB, output_bytes=MIB)

    assert check_exchange(directory_usage(tmp_path, budget.exchange_entries), budget) is None


def test_an_exchange_folder_over_its_bytes_is_refused_with_both_numbers() -> None:
    budget = JobBudget(reply_bytes=MIB, exchange_bytes=10 * MIB)

    assert check_exchange(DirectoryUsage(bytes=11 * MIB, entries=3), budget) == (
        f"the exchange folder uses {11 * MIB} bytes, over this job's cap of {10 * MIB}"
    )


def test_an_exchange_folder_with_too_many_files_or_an_unreadable_folder_is_refused() -> None:
    budget = JobBudget(reply_bytes=MIB, exchange_bytes=MIB, exchange_entries=100)

    assert "over 100 files" in (check_exchange(DirectoryUsage(bytes=0, entries=100, truncated=True), budget) or "")
    assert "over 100 files" in (check_exchange(DirectoryUsage(bytes=0, entries=101), budget) or "")
    assert "cannot read" in (check_exchange(DirectoryUsage(bytes=0, entries=1, unreadable=1), budget) or "")
