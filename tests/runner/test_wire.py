"""The wire carries typed messages only: anything else, or anything too big, is a protocol error."""

from __future__ import annotations

import socket

import pytest

from kfoundry.runner.wire import HEADER, MAX_FRAME, Channel, Collect, Forward, Judge, PlainValue, Stop, TensorRef, WireError, decode, encode
from kfoundry.schema import State
from kfoundry.verify.facts import CallCheck


def test_a_message_round_trips_as_the_same_typed_model() -> None:
    message = Collect(call=3, outputs=[TensorRef(dtype="float32", shape=[2, 3], storage="file", file="out-0.bin")], judge=Judge(trial=True))

    back = decode(encode(message)[HEADER.size:])

    assert isinstance(back, Collect) and back == message


def test_nested_facts_keep_their_types() -> None:
    from kfoundry.runner.wire import Collected

    check = CallCheck(call=1, state=State.mismatch, late_write=[0])

    back = decode(encode(Collected(call=1, check=check))[HEADER.size:])

    assert back.check.state is State.mismatch and back.check.late_write == [0]


@pytest.mark.parametrize("body", [b"{}", b'{"kind": "no_such_message"}', b'{"kind": "forward", "call": "x", "inputs": []}',
                                  b"not json", b'{"kind": "stop", "extra": 1}'])
def test_anything_outside_the_protocol_is_refused(body: bytes) -> None:
    with pytest.raises(WireError, match="not a protocol message"):
        decode(body)


def test_a_message_over_the_frame_limit_is_never_sent() -> None:
    huge = Forward(call=0, inputs=[PlainValue(value="x" * (MAX_FRAME + 1))])

    with pytest.raises(WireError, match="frame limit"):
        encode(huge)


def test_a_channel_refuses_an_announced_frame_over_the_limit_before_reading_it() -> None:
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(HEADER.pack(MAX_FRAME + 1))
        with pytest.raises(WireError, match="over the limit"):
            Channel(ours).recv()
    finally:
        ours.close()
        theirs.close()


def test_a_channel_delivers_messages_in_order() -> None:
    ours, theirs = socket.socketpair()
    try:
        sender, receiver = Channel(theirs), Channel(ours)
        sender.send(Forward(call=0, inputs=[PlainValue(value=[1, 2])]))
        sender.send(Stop())
        first, second = receiver.recv(), receiver.recv()
    finally:
        ours.close()
        theirs.close()

    assert isinstance(first, Forward) and first.inputs[0].value == [1, 2]
    assert isinstance(second, Stop)
