"""Tensors cross the worker boundary as described bytes, never as pickles."""

from __future__ import annotations

import socket

import pytest
import torch

from kfoundry.runner.wire import Channel, WireError, decode_tensor, encode_tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool])
def test_tensors_round_trip_bit_exactly(dtype: torch.dtype) -> None:
    value = (torch.randn(3, 5) * 10).to(dtype)
    entries, blob = encode_tensors([value])
    back = decode_tensor(entries[0], blob)
    assert back.dtype == dtype and back.shape == value.shape and torch.equal(back, value)


def test_non_contiguous_and_empty_tensors_round_trip() -> None:
    value = torch.arange(12.0).reshape(3, 4).t()
    empty = torch.empty(0, 7)
    entries, blob = encode_tensors([value, empty])
    assert torch.equal(decode_tensor(entries[0], blob), value)
    assert decode_tensor(entries[1], blob).shape == (0, 7)


def test_non_tensors_are_described_not_serialized() -> None:
    entries, blob = encode_tensors([[1, 2], 3.0])
    assert entries[0] == {"kind": "object", "type": "list", "repr": "[1, 2]"} and blob == b""


def test_a_tensor_subclass_is_marked_as_not_plain() -> None:
    class Sneaky(torch.Tensor):
        pass

    entries, _ = encode_tensors([torch.ones(2).as_subclass(Sneaky)])
    assert entries[0]["plain"] is False


def test_an_entry_that_lies_about_its_size_is_refused() -> None:
    entries, blob = encode_tensors([torch.ones(4)])
    entries[0]["shape"] = [400]
    with pytest.raises(WireError):
        decode_tensor(entries[0], blob)


def test_unknown_dtypes_are_refused() -> None:
    entries, blob = encode_tensors([torch.ones(4)])
    entries[0]["dtype"] = "__class__"
    with pytest.raises(WireError):
        decode_tensor(entries[0], blob)


def test_channel_frames_carry_header_and_blob() -> None:
    a, b = socket.socketpair()
    left, right = Channel(a), Channel(b)
    left.send({"op": "x", "n": 1}, b"\x00\x01")
    assert right.recv() == ({"op": "x", "n": 1}, b"\x00\x01")
    a.close()
    with pytest.raises(EOFError):
        right.recv()
    b.close()
