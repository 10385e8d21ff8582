"""Device memory crosses to another process as a descriptor: the consumer reads the producer's values, the
producer sees the consumer's writes, and a lying or junk descriptor is a DeviceShareError there, not a crash."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from kfoundry.runner import devshare

pytestmark = pytest.mark.gpu

#: The other process: maps what it is sent, checks it holds arange, negates it, and says what happened.
CONSUMER = r"""
import json, socket, sys
import torch
from kfoundry.runner import devshare

sock = socket.socket(fileno=int(sys.argv[1]))
while True:
    msg, fds, _, _ = socket.recv_fds(sock, 65536, 1)
    ask = json.loads(msg or b'{"kind": "done"}')
    if ask["kind"] == "done":
        break
    try:
        t = devshare.import_tensor(fds[0] if fds else -1, ask["nbytes"], ask["shape"], getattr(torch, ask["dtype"]), 0)
    except devshare.DeviceShareError as exc:
        sock.send(json.dumps({"ok": False, "error": str(exc)}).encode())
        continue
    same = torch.equal(t, torch.arange(t.numel(), dtype=t.dtype, device=t.device).view(t.shape))
    t.neg_()
    torch.cuda.synchronize()
    sock.send(json.dumps({"ok": True, "same": same}).encode())
"""

Ask = Callable[[dict[str, Any], int | None], dict[str, Any]]


@pytest.fixture
def device() -> int:
    reason = devshare.supported(0)
    if reason:
        pytest.skip(reason)
    return 0


@contextlib.contextmanager
def consumer() -> Iterator[Ask]:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine.settimeout(120)
    proc = subprocess.Popen([sys.executable, "-c", CONSUMER, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                            stderr=subprocess.PIPE, text=True)
    theirs.close()

    def ask(msg: dict[str, Any], fd: int | None) -> dict[str, Any]:
        socket.send_fds(mine, [json.dumps(msg).encode()], [fd] if fd is not None else [])
        answer = mine.recv(65536)
        if not answer:
            proc.wait(timeout=30)
            pytest.fail(f"the consumer died (rc {proc.returncode}): {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        return json.loads(answer)

    try:
        yield ask
    finally:
        with contextlib.suppress(OSError):
            mine.send(json.dumps({"kind": "done"}).encode())
        mine.close()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        assert proc.returncode == 0, f"consumer exit status {proc.returncode}"


def _arange_export(shape: tuple[int, ...], device: int) -> tuple[torch.Tensor, int, int]:
    mine, fd, nbytes = devshare.exportable_empty(shape, torch.int32, device)
    mine.copy_(torch.arange(mine.numel(), dtype=torch.int32, device=device).view(shape))
    torch.cuda.synchronize()  # stream order does not cross processes
    return mine, fd, nbytes


def test_the_consumer_reads_the_producers_values_and_the_producer_sees_its_writes(device: int) -> None:
    shape = (64, 1000)
    mine, fd, nbytes = _arange_export(shape, device)

    with consumer() as ask:
        answer = ask({"kind": "map", "nbytes": nbytes, "shape": list(shape), "dtype": "int32"}, fd)
    os.close(fd)

    assert answer == {"ok": True, "same": True}
    assert torch.equal(mine, -torch.arange(mine.numel(), dtype=torch.int32, device=device).view(shape))


def test_a_lying_or_junk_descriptor_is_refused_and_the_consumer_carries_on(device: int) -> None:
    small, small_fd, small_bytes = _arange_export((16,), device)
    junk = tempfile.TemporaryFile()
    junk.write(b"\0" * (4 << 20))
    junk.flush()
    left, right = socket.socketpair()

    with consumer() as ask:
        overstated = ask({"kind": "map", "nbytes": small_bytes * 2, "shape": [16], "dtype": "int32"}, small_fd)
        unaligned = ask({"kind": "map", "nbytes": small_bytes + 1, "shape": [16], "dtype": "int32"}, small_fd)
        from_file = ask({"kind": "map", "nbytes": 4 << 20, "shape": [16], "dtype": "int32"}, junk.fileno())
        from_socket = ask({"kind": "map", "nbytes": 4 << 20, "shape": [16], "dtype": "int32"}, left.fileno())
        still_works = ask({"kind": "map", "nbytes": small_bytes, "shape": [16], "dtype": "int32"}, small_fd)
    os.close(small_fd)
    for f in (left, right, junk):
        f.close()

    for refused in (overstated, unaligned):
        assert refused["ok"] is False and "cuMemMap" in refused["error"], refused
    for refused in (from_file, from_socket):
        assert refused["ok"] is False and "cuMemImportFromShareableHandle" in refused["error"], refused
    assert still_works == {"ok": True, "same": True}
    assert torch.equal(small, -torch.arange(16, dtype=torch.int32, device=device))
