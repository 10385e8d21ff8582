"""Resumable SSE streams over streamable HTTP, scoped to their session, and silence for cancelled requests.

With an event store the SDK gives every SSE event an id, and a client whose stream dropped
mid-call (a long ``profile``) reconnects with ``Last-Event-ID`` and receives what it missed.
The SDK shares one store between all sessions and names a stream by its request id alone, so
two sessions' request 3 would share a stream: ``SessionScope`` lets the store tell them apart
by making each request's session id readable where the SDK stores and replays events.

The SDK answers a cancelled request on the 2025-era wire with error -32800 so that the
request's SSE stream ends; the protocol says a cancelled request gets no reply.
``SessionScope`` withholds that one frame (the stream still ends), and the store does not
replay it.
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass

from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.types import JSONRPCError, JSONRPCMessage, JSONRPCResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: how the SDK answers a request that settled without a response (``streamable_http.REQUEST_CANCELLED``)
CANCELLED_CODE = -32800
_CANCELLED_FRAME = b'"error":{"code":-32800,'
MAX_EVENTS = 10_000
MAX_BYTES = 64 << 20


class _Session:
    """The session a request belongs to; filled from the response for the request that opens it."""

    def __init__(self, session_id: str | None) -> None:
        self.id = session_id


# The SDK stores a session's events from a task started while the session's opening request
# was handled, so that task sees this request's holder, filled in once the session id is sent.
_session: ContextVar[_Session | None] = ContextVar("kfoundry_session", default=None)


class SessionScope:
    """ASGI middleware: each request's session readable by ``SessionEvents``; no -32800 reply to a cancelled request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = MCP_SESSION_ID_HEADER.lower().encode()
        given = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == header), None)
        session = _Session(given)
        token = _session.set(session)

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and session.id is None:
                session.id = next((v.decode("latin-1") for k, v in message.get("headers", []) if k.lower() == header), None)
            elif message["type"] == "http.response.body" and _answers_cancelled(message.get("body", b"")):
                # The request's stream ends without the reply the protocol forbids.
                message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            _session.reset(token)


def _answers_cancelled(body: bytes) -> bool:
    """Whether ``body`` is one SSE event carrying the SDK's reply to a cancelled request."""
    if _CANCELLED_FRAME not in body:
        return False
    for line in body.splitlines():
        if line.startswith(b"data:"):
            try:
                frame = json.loads(line[5:])
            except ValueError:
                return False
            error = frame.get("error") if isinstance(frame, dict) and "id" in frame else None
            return isinstance(error, dict) and error.get("code") == CANCELLED_CODE
    return False


@dataclass
class _Event:
    session: str | None
    stream: StreamId
    message: JSONRPCMessage | None
    size: int
    cancelled: bool = False


class SessionEvents(EventStore):
    """The last ``MAX_EVENTS`` events (at most ``MAX_BYTES``) of every session, in memory.

    An event is replayed only to a request of the session that received it, and only after one
    of that session's event ids; ids are random, so one session's ids say nothing of another's.
    """

    def __init__(self, max_events: int = MAX_EVENTS, max_bytes: int = MAX_BYTES) -> None:
        self._events: OrderedDict[EventId, _Event] = OrderedDict()
        self._bytes = 0
        self._max_events = max_events
        self._max_bytes = max_bytes

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = secrets.token_urlsafe(12)
        cancelled = isinstance(message, JSONRPCError) and message.error.code == CANCELLED_CODE
        if cancelled:
            message = None  # never replayed: a cancelled request gets no reply
        size = len(message.model_dump_json(by_alias=True, exclude_unset=True)) if message is not None else 0
        session = _session.get()
        self._events[event_id] = _Event(session.id if session is not None else None, stream_id, message, size, cancelled)
        self._bytes += size
        while self._events and (len(self._events) > self._max_events or self._bytes > self._max_bytes):
            _, dropped = self._events.popitem(last=False)
            self._bytes -= dropped.size
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        last = self._events.get(last_event_id)
        asking = _session.get()
        if last is None or last.session is None or asking is None or asking.id != last.session:
            return None
        later = False
        replayed: list[tuple[EventId, JSONRPCMessage]] = []
        cancelled = False
        for event_id, event in list(self._events.items()):
            if event_id == last_event_id:
                later = True
            elif later and (event.session, event.stream) == (last.session, last.stream):
                cancelled = cancelled or event.cancelled
                if event.message is not None:
                    replayed.append((event_id, event.message))
        for event_id, message in replayed:
            await send_callback(EventMessage(message, event_id))
        # A stream that ended (answered, or cancelled) has no live tail to wait on.
        answered = any(isinstance(message, JSONRPCResponse | JSONRPCError) for _, message in replayed)
        return None if cancelled or answered else last.stream

