"""Per-device admission: fair across callers, exclusive while timing, with queue positions.

Waiting jobs are served round-robin across owners (token names), FIFO within an owner,
strictly in that order: a waiting exclusive (timing) job is never overtaken, so timing
jobs cannot starve. Background work (starting spare workers) never starts while an
exclusive holder runs, and the holder waits for running background work before it
times anything, so nothing else burns the machine while a job is being timed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

PositionFn = Callable[[int], Awaitable[None]]


@dataclass(eq=False)
class _Ticket:
    owner: str
    exclusive: bool
    admitted: anyio.Event = field(default_factory=anyio.Event)


class DeviceQueue:
    def __init__(self, capacity: int, per_owner: int = 0) -> None:
        self.capacity = capacity
        self.per_owner = per_owner  # 0: no per-owner cap
        self.shared = 0
        self.exclusive = False
        self.background_jobs = 0
        self.running: dict[str, int] = {}
        self._waiting: dict[str, deque[_Ticket]] = {}
        self._turn: deque[str] = deque()
        self._changed = anyio.Event()

    # -- introspection ------------------------------------------------------------
    def order(self) -> list[_Ticket]:
        """Waiting tickets in the order they will be admitted."""
        queues = {owner: list(q) for owner, q in self._waiting.items()}
        out: list[_Ticket] = []
        owners = list(self._turn)
        while any(queues.get(o) for o in owners):
            for owner in owners:
                if queues.get(owner):
                    out.append(queues[owner].pop(0))
        return out

    def depth(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    # -- admission ----------------------------------------------------------------
    def _fits(self, ticket: _Ticket) -> bool:
        if self.per_owner and self.running.get(ticket.owner, 0) >= self.per_owner:
            return False
        if ticket.exclusive:
            return not (self.exclusive or self.shared)
        return not self.exclusive and self.shared < self.capacity

    def _pump(self) -> None:
        """Admit waiting tickets in round-robin order while the head one fits."""
        progressed = True
        while progressed and self._turn:
            progressed = False
            for _ in range(len(self._turn)):
                owner = self._turn[0]
                queue = self._waiting[owner]
                ticket = queue[0]
                if not self._fits(ticket):
                    if ticket.exclusive or not self.per_owner or self.running.get(owner, 0) < self.per_owner:
                        # head-of-line blocking keeps exclusive jobs from being starved
                        self._signal()
                        return
                    self._turn.rotate(-1)
                    continue
                queue.popleft()
                self._turn.popleft()
                if queue:
                    self._turn.append(owner)
                else:
                    del self._waiting[owner]
                self._take(ticket)
                ticket.admitted.set()
                progressed = True
                break
        self._signal()

    def _take(self, ticket: _Ticket) -> None:
        if ticket.exclusive:
            self.exclusive = True
        else:
            self.shared += 1
        self.running[ticket.owner] = self.running.get(ticket.owner, 0) + 1

    def _give_back(self, ticket: _Ticket) -> None:
        if ticket.exclusive:
            self.exclusive = False
        else:
            self.shared -= 1
        self.running[ticket.owner] -= 1
        if not self.running[ticket.owner]:
            del self.running[ticket.owner]

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _withdraw(self, ticket: _Ticket) -> None:
        queue = self._waiting.get(ticket.owner)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            if not queue:
                del self._waiting[ticket.owner]
                self._turn.remove(ticket.owner)
        self._pump()

    @asynccontextmanager
    async def hold(self, exclusive: bool, owner: str = "local", on_position: PositionFn | None = None) -> AsyncIterator[None]:
        ticket = _Ticket(owner, exclusive)
        if owner not in self._waiting:
            self._waiting[owner] = deque()
            self._turn.append(owner)
        self._waiting[owner].append(ticket)
        self._pump()
        try:
            last = -1
            while not ticket.admitted.is_set():
                changed = self._changed
                position = self.order().index(ticket) + 1 if ticket in self.order() else 0
                if on_position is not None and position != last and position:
                    await on_position(position)
                    last = position
                if ticket.admitted.is_set():
                    break
                await changed.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                if ticket.admitted.is_set():
                    self._give_back(ticket)
                    self._pump()
                else:
                    self._withdraw(ticket)
            raise
        try:
            yield
        finally:
            self._give_back(ticket)
            self._pump()

    async def quiesce(self) -> None:
        """Wait until background work (spares starting) is done; an exclusive holder calls this before timing."""
        while self.background_jobs:
            await self._changed.wait()

    @asynccontextmanager
    async def background(self) -> AsyncIterator[None]:
        while self.exclusive or any(t.exclusive for t in self.order()):
            await self._changed.wait()
        self.background_jobs += 1
        try:
            yield
        finally:
            self.background_jobs -= 1
            self._signal()
            self._pump()
