"""Tensors by reference on the CPU: a file both processes map; every reference is checked before it is mapped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kfoundry.runner import exchange
from kfoundry.runner.wire import PlainValue, TensorRef


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.bool])
def test_a_shared_tensor_maps_to_the_same_values(tmp_path: Path, dtype: torch.dtype) -> None:
    value = (torch.randn(4, 6) * 10).to(dtype)

    ref = exchange.share(value, tmp_path, "out-0")
    back = exchange.open_value(ref, tmp_path)

    assert isinstance(ref, TensorRef) and ref.storage == "file"
    assert back.dtype == dtype and torch.equal(back, value)


def test_writes_through_one_mapping_are_seen_through_the_other(tmp_path: Path) -> None:
    mine, ref = exchange.shared_empty([3, 3], torch.float32, "cpu", tmp_path, "in-0-0")
    theirs = exchange.open_tensor(ref, tmp_path)

    mine.fill_(2.5)

    assert torch.equal(theirs, torch.full((3, 3), 2.5))


def test_views_are_shared_as_their_values(tmp_path: Path) -> None:
    value = torch.arange(12.0).reshape(3, 4).t()

    back = exchange.open_value(exchange.share(value, tmp_path, "out-1"), tmp_path)

    assert torch.equal(back, value)


def test_non_tensors_cross_as_plain_values_or_as_a_description(tmp_path: Path) -> None:
    assert exchange.share([1, 2], tmp_path, "x") == PlainValue(value=[1, 2], type_name="list")
    described = exchange.share(object(), tmp_path, "x")
    assert isinstance(described, PlainValue) and described.value is None and described.type_name == "object"


@pytest.mark.parametrize("file", ["../etc/passwd", "/etc/passwd", "a/b.bin", ".hidden.bin", "x.txt"])
def test_a_reference_naming_a_file_outside_the_exchange_is_refused(tmp_path: Path, file: str) -> None:
    ref = TensorRef(dtype="float32", shape=[1], storage="file", file=file)

    with pytest.raises(exchange.ExchangeError, match="bad exchange file name"):
        exchange.open_tensor(ref, tmp_path)


def test_a_reference_whose_size_disagrees_with_its_file_is_refused(tmp_path: Path) -> None:
    ref = exchange.share(torch.ones(4), tmp_path, "out-0")
    assert isinstance(ref, TensorRef)
    lying = ref.model_copy(update={"shape": [1 << 20]})

    with pytest.raises(exchange.ExchangeError, match="holds 16 bytes"):
        exchange.open_tensor(lying, tmp_path)


def test_an_unknown_dtype_or_a_negative_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(exchange.ExchangeError, match="unknown dtype"):
        exchange.open_tensor(TensorRef(dtype="Tensor", shape=[1], storage="file", file="a.bin"), tmp_path)
    with pytest.raises(exchange.ExchangeError, match="bad shape"):
        exchange.open_tensor(TensorRef(dtype="float32", shape=[-1], storage="file", file="a.bin"), tmp_path)
