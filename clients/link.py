"""One MCP connection that outlives its server: a restarted server costs the call in flight a retry, not the run.

When a streamable HTTP server dies, the SDK's ``Client`` fails as a whole: its task group
raises, and it cancels whatever runs inside its ``async with``. So the client lives in a task
of its own (``Link.own``); callers in any task borrow the current one, and a call that the
connection's end cut short, or that a draining server refused, waits for a fresh client and
runs again, until ``restart_wait_s`` has passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx2
from anyio.abc import TaskStatus
from mcp import Client, MCPError
from mcp.types import CONNECTION_CLOSED, CallToolResult

logger = logging.getLogger(__name__)

#: ``kfoundry.server.app.DRAINING``: how a server that is shutting down refuses a new call (not imported: it pulls in the server)
DRAINING = "the server is shutting down"
RESTART_WAIT_S = 180.0
PAUSE_S = (0.5, 5.0)

OpenClient = Callable[[AsyncExitStack], Awaitable[Client]]


class ConnectionLost(RuntimeError):
    """The server stayed unreachable (or kept refusing calls while shutting down) past the wait."""


def _connection_failure(exc: BaseException) -> bool:
    """An error that says the connection, not the call, failed (also inside the SDK's exception groups)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_connection_failure(inner) for inner in exc.exceptions)
    if isinstance(exc, MCPError):
        return exc.code == CONNECTION_CLOSED
    return isinstance(exc, httpx2.TransportError | anyio.ClosedResourceError | anyio.BrokenResourceError | anyio.EndOfStream | ConnectionError)


class Link:
    """The current ``mcp.Client`` of a session, replaced when its connection ends."""

    def __init__(self, open_client: OpenClient, restart_wait_s: float = RESTART_WAIT_S) -> None:
        self._open = open_client
        self.restart_wait_s = restart_wait_s
        self.client: Client | None = None
        self.reconnects = 0
        self._ready = anyio.Event()
        self._ended = anyio.Event()
        self._replace = anyio.Event()
        self._closing = False
        self._failure: BaseException | None = None

    async def own(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold a client until ``close``; open a new one whenever a caller reports this one gone.

        The first connection's failure is raised to whoever started this task; later ones are retried.
        """
        first = True
        while not self._closing:
            try:
                async with AsyncExitStack() as stack:
                    client = await (self._open(stack) if first else self._reopen(stack))
                    self.client, self._ended, self._replace = client, anyio.Event(), anyio.Event()
                    self._ready.set()
                    if first:
                        task_status.started()
                        first = False
                    await self._replace.wait()
            except BaseException as exc:  # noqa: BLE001 - connection failures are expected here; anything else is re-raised
                if first or not _connection_failure(exc):
                    self._failure = exc
                    self._ended.set()
                    self._ready.set()
                    raise
                logger.info("the MCP connection ended (%s); reconnecting", exc)
            finally:
                self._ended.set()
                self._unready()

    async def _reopen(self, stack: AsyncExitStack) -> Client:
        deadline = time.monotonic() + self.restart_wait_s
        pause = PAUSE_S[0]
        while True:
            try:
                client = await self._open(stack)
            except BaseException as exc:  # noqa: BLE001 - retried while the server restarts
                if not _connection_failure(exc) or time.monotonic() + pause > deadline:
                    raise
                logger.info("the server is not back yet (%s); trying again in %.1f s", exc, pause)
                await anyio.sleep(pause)
                pause = min(pause * 2, PAUSE_S[1])
                continue
            self.reconnects += 1
            return client

    def close(self) -> None:
        self._closing = True
        self._replace.set()

    async def _current(self, deadline: float) -> tuple[Client, anyio.Event]:
        with anyio.move_on_after(max(deadline - time.monotonic(), 0)):
            await self._ready.wait()
        if self._failure is not None:
            raise ConnectionLost(f"the server connection failed: {self._failure}") from self._failure
        if not self._ready.is_set() or self.client is None:
            raise ConnectionLost(f"the server was not reachable again within {self.restart_wait_s:.0f} s")
        return self.client, self._ended

    def _drop(self, ended: anyio.Event) -> None:
        """Ask for a new client, unless the one that failed was already replaced."""
        if ended is self._ended and not ended.is_set():
            self._unready()
            self._replace.set()

    def _unready(self) -> None:
        # Callers already waiting hold the unset event, which the next client sets.
        if self._ready.is_set() and not self._closing and self._failure is None:
            self._ready = anyio.Event()

    async def call_tool(self, tool: str, arguments: dict[str, Any], read_timeout_s: float) -> CallToolResult:
        """``tool`` on the current client, run again on a new one if the connection ended under it.

        Raises:
            ConnectionLost: no working connection came back within ``restart_wait_s``.
        """
        deadline = time.monotonic() + self.restart_wait_s + read_timeout_s
        while True:
            client, ended = await self._current(deadline)
            result = await self._attempt(client, ended, tool, arguments, read_timeout_s)
            if result is not None and not (result.is_error and DRAINING in _text(result)):
                return result
            if time.monotonic() > deadline:
                raise ConnectionLost(f"{tool}: the server did not come back within {self.restart_wait_s:.0f} s")
            if result is not None:
                # Refused by a draining server, which still answers other calls on this connection:
                # ask again until its successor answers (the connection fails once it is gone).
                logger.info("%s: refused by a server that is shutting down; calling again shortly", tool)
                await anyio.sleep(PAUSE_S[0])
            else:
                logger.info("%s: the connection ended during the call; calling again", tool)

    async def _attempt(self, client: Client, ended: anyio.Event, tool: str, arguments: dict[str, Any], read_timeout_s: float) -> CallToolResult | None:
        """The call's result, or None when the connection ended before it came."""
        outcome: list[CallToolResult] = []
        try:
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    await ended.wait()
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                outcome.append(await client.call_tool(tool, arguments, read_timeout_seconds=read_timeout_s))
                group.cancel_scope.cancel()
        except BaseException as exc:
            if not _connection_failure(exc):
                raise
            self._drop(ended)
        return outcome[0] if outcome else None


def _text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)
