"""What every tool call shares: the worker pool, argument checks, device choice, progress."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import cache

import anyio

from kfoundry.artifacts import Run
from kfoundry.backends import UnknownBackendError, get_backend, names
from kfoundry.backends.base import Backend
from kfoundry.errors import BadRequest, Unavailable
from kfoundry.runner.pool import WorkerPool
from kfoundry.schema import ToolchainInfo

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], Awaitable[None]]

async def no_progress(fraction: float, message: str) -> None:
    return None


@dataclass
class Runtime:
    pool: WorkerPool
    progress: Progress = no_progress
    owner: str = "local"

    def for_call(self, progress: Progress | None, owner: str = "local") -> Runtime:
        return Runtime(self.pool, progress or no_progress, owner)

    @asynccontextmanager
    async def slot(self, backend: Backend, exclusive: bool) -> AsyncIterator[str]:
        """Pick the least busy device for ``backend``, wait for it (reporting queue position), hold it.

        Picking and joining the queue happen without an await in between, so calls arriving
        together spread over the GPUs instead of piling onto the first.
        """
        kind = device_kind(backend)
        await self.progress(0.0, f"queued for {kind}")
        device = self.pool.pick(kind)

        async def position(n: int) -> None:
            await self.progress(0.0, f"queued: position {n} on {device}")

        async with self.pool.slot(device, exclusive, self.owner, position):
            await self.progress(0.05, f"admitted on {device}")
            yield device


CANCELLED = "cancelled.json"


@contextmanager
def recording_cancellation(run: Run, tool: str) -> Iterator[None]:
    """Leave ``cancelled.json`` in ``run`` when the call is cancelled, so the run says why it has no result.

    A call is cancelled when its client cancels it or goes away, or when the server stops; the
    record is written without awaiting anything, so the cancellation itself cannot interrupt it.
    """
    start = time.monotonic()
    try:
        yield
    except anyio.get_cancelled_exc_class():
        try:
            run.write(CANCELLED, {
                "state": "cancelled", "tool": tool, "after_s": round(time.monotonic() - start, 3),
                "reason": "the call was cancelled: its client cancelled it or went away, or the server stopped",
            })
        except (BadRequest, OSError):
            logger.warning("could not record the cancellation of run %s", run.id, exc_info=True)
        raise


@cache
def probe(name: str) -> ToolchainInfo:
    return get_backend(name).probe()


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_backend(name: str) -> Backend:
    """The backend to use, or a BadRequest/Unavailable naming what would work."""
    if not isinstance(name, str) or not name.strip():
        raise BadRequest(f"backend is required; one of: {', '.join(names())}")
    try:
        backend = get_backend(name.strip().lower())
    except UnknownBackendError as exc:
        raise BadRequest(str(exc)) from exc
    info = probe(backend.name)
    if not info.available:
        raise Unavailable(f"backend {backend.name!r} is unavailable on this host: {info.reason}")
    return backend


def device_kind(backend: Backend) -> str:
    """'cuda' or 'cpu': where this backend's jobs run on this host."""
    info = probe(backend.name)
    return "cuda" if info.device.startswith("cuda") else "cpu"


def timeout_or_default(value: float | None, default: float) -> float:
    """The request's timeout (its bounds are the request model's), or the tool's default."""
    return default if value is None else float(value)
