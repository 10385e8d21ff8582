"""The wire carries typed messages only: anything else, or anything too big, is a protocol error."""

from __future__ import annotations

import os
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
        theirs.sendall(HEADER.pack(MAX_FRAME + 1, 0))
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


def _device_ref(name: str) -> TensorRef:
    return TensorRef(dtype="float32", shape=[4], storage="cuda", cuda={"name": name, "nbytes": 2 << 20})


def test_descriptors_for_device_tensors_arrive_with_their_message_in_order() -> None:
    ours, theirs = socket.socketpair()
    pipes = [os.pipe() for _ in range(2)]
    got: list[tuple[str, int]] = []
    try:
        sender, receiver = Channel(theirs), Channel(ours)
        sender.outgoing = lambda refs: [pipes[int(r.cuda["name"][-1])][1] for r in refs]
        receiver.incoming = lambda refs, fds: got.extend((r.cuda["name"], fd) for r, fd in zip(refs, fds, strict=True))
        sender.send(Forward(call=0, inputs=[_device_ref("in-1"), PlainValue(value=3), _device_ref("in-0")]))

        message = receiver.recv()

        assert isinstance(message, Forward) and [name for name, _ in got] == ["in-1", "in-0"]
        # each descriptor is the write end of the pipe it was sent for
        for name, fd in got:
            os.write(fd, name.encode())
            assert os.read(pipes[int(name[-1])][0], 16) == name.encode()
            os.close(fd)
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
        ours.close()
        theirs.close()


def test_a_frame_whose_descriptors_do_not_match_its_device_tensors_is_a_protocol_error() -> None:
    ours, theirs = socket.socketpair()
    r, w = os.pipe()
    try:
        frame = encode(Forward(call=0, inputs=[PlainValue(value=1)]), fds=1)
        socket.send_fds(theirs, [frame[: HEADER.size]], [w])
        theirs.sendall(frame[HEADER.size:])
        with pytest.raises(WireError, match="announced 1 descriptors for 0 device tensors"):
            Channel(ours).recv()
        os.close(w)
        # the stray descriptor was closed by the receiver: the pipe's last writer is gone
        assert os.read(r, 1) == b""
    finally:
        os.close(r)
        ours.close()
        theirs.close()
