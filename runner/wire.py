"""Framing between the trusted server and a worker, and tensors as plain data.

A frame is ``>IQ`` (json length, blob length), a JSON header, then raw bytes.
Tensors travel as ``{"dtype", "shape", "offset", "nbytes"}`` entries pointing
into the blob, so nothing crossing the boundary is ever unpickled.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

HEADER = struct.Struct(">IQ")
MAX_JSON_BYTES = 64 << 20


class WireError(RuntimeError):
    """The peer broke the framing (truncated, oversized or malformed frame)."""


def encode_tensors(tensors: list[Any]) -> tuple[list[dict[str, Any]], bytes]:
    """Describe tensors and pack their bytes; non-tensors are described by type only."""
    import torch

    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    for value in tensors:
        if not isinstance(value, torch.Tensor):
            entries.append({"kind": "object", "type": type(value).__qualname__, "repr": repr(value)[:200]})
            continue
        plain = type(value) is torch.Tensor
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        entries.append(
            {
                "kind": "tensor",
                "plain": plain,
                "type": type(value).__qualname__,
                "dtype": str(value.dtype).removeprefix("torch."),
                "shape": list(value.shape),
                "offset": offset,
                "nbytes": len(raw),
            }
        )
        chunks.append(raw)
        offset += len(raw)
    return entries, b"".join(chunks)


def decode_tensor(entry: dict[str, Any], blob: bytes | memoryview) -> torch.Tensor:
    """Rebuild one tensor from its entry; raises ``WireError`` on inconsistent sizes."""
    import torch

    dtype = getattr(torch, str(entry["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise WireError(f"unknown dtype {entry['dtype']!r}")
    shape = [int(s) for s in entry["shape"]]
    start, nbytes = int(entry["offset"]), int(entry["nbytes"])
    numel = 1
    for s in shape:
        numel *= s
    if numel * dtype.itemsize != nbytes or start < 0 or start + nbytes > len(blob):
        raise WireError("tensor entry does not match its bytes")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    raw = bytearray(blob[start : start + nbytes])
    return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape)


def pack(header: dict[str, Any], blob: bytes = b"") -> bytes:
    body = json.dumps(header, separators=(",", ":"), allow_nan=True).encode()
    return HEADER.pack(len(body), len(blob)) + body + blob


class Channel:
    """Blocking frame channel over a connected socket (the worker's side)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, header: dict[str, Any], blob: bytes = b"") -> None:
        self.sock.sendall(pack(header, blob))

    def _exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError("peer closed the channel")
            buf += chunk
        return bytes(buf)

    def recv(self) -> tuple[dict[str, Any], bytes]:
        json_len, blob_len = HEADER.unpack(self._exactly(HEADER.size))
        if json_len > MAX_JSON_BYTES:
            raise WireError("header too large")
        header = json.loads(self._exactly(json_len))
        blob = self._exactly(blob_len) if blob_len else b""
        return header, blob

    def request(self, header: dict[str, Any]) -> dict[str, Any]:
        """Send a request and wait for the server's reply (used for builds)."""
        self.send(header)
        reply, _ = self.recv()
        return reply


_worker_channel: Channel | None = None


def set_worker_channel(channel: Channel | None) -> None:
    global _worker_channel
    _worker_channel = channel


def worker_channel() -> Channel | None:
    """The channel to the server when running inside a worker, else ``None``."""
    return _worker_channel
