"""The SSE event store on its own: bounded, scoped to a session, silent about cancelled requests."""

from __future__ import annotations

import pytest
from mcp.server.streamable_http import EventMessage
from mcp.types import ErrorData, JSONRPCError, JSONRPCNotification, JSONRPCResponse

from kfoundry.server import events
from kfoundry.server.events import SessionEvents

pytestmark = pytest.mark.anyio


def note(n: int) -> JSONRPCNotification:
    return JSONRPCNotification(jsonrpc="2.0", method="notifications/progress", params={"progressToken": "t", "progress": n / 10})


def in_session(session_id: str) -> None:
    events._session.set(events._Session(session_id))


async def replayed(store: SessionEvents, after: str) -> tuple[list[EventMessage], str | None]:
    sent: list[EventMessage] = []

    async def send(message: EventMessage) -> None:
        sent.append(message)

    stream = await store.replay_events_after(after, send)
    return sent, stream


async def test_a_replay_sends_the_later_events_of_that_stream_and_keeps_it_open_until_answered() -> None:
    store = SessionEvents()
    in_session("s1")
    first = await store.store_event("7", note(1))
    await store.store_event("8", note(2))  # another request's stream
    second = await store.store_event("7", note(3))

    sent, stream = await replayed(store, first)
    assert [m.event_id for m in sent] == [second] and stream == "7"

    await store.store_event("7", JSONRPCResponse(jsonrpc="2.0", id=7, result={}))
    sent, stream = await replayed(store, first)
    assert len(sent) == 2 and stream is None  # answered: nothing left to wait for


async def test_another_session_cannot_replay_a_sessions_events() -> None:
    store = SessionEvents()
    in_session("s1")
    first = await store.store_event("1", note(1))
    await store.store_event("1", note(2))

    in_session("s2")
    sent, stream = await replayed(store, first)

    assert (sent, stream) == ([], None)


async def test_a_cancelled_requests_reply_is_never_replayed() -> None:
    store = SessionEvents()
    in_session("s1")
    first = await store.store_event("4", note(1))
    await store.store_event("4", JSONRPCError(jsonrpc="2.0", id=4, error=ErrorData(code=events.CANCELLED_CODE, message="Request cancelled")))

    sent, stream = await replayed(store, first)

    assert (sent, stream) == ([], None)


async def test_the_oldest_events_go_first_past_the_bound() -> None:
    store = SessionEvents(max_events=3)
    in_session("s1")
    ids = [await store.store_event("1", note(n)) for n in range(5)]

    assert (await replayed(store, ids[0])) == ([], None)
    sent, _ = await replayed(store, ids[2])
    assert [m.event_id for m in sent] == ids[3:]
