"""The streamable HTTP wire as a client that is not ours meets it: SSE event ids, resuming a dropped stream,
no reply to a cancelled request, and the size of the tool listing.

These speak raw HTTP (the 2025-11-25 handshake that the Inspector and the TypeScript SDK use), so
they check the bytes on the wire rather than what the Python client makes of them.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from candidates import CORRECT_CPP
from http_support import (
    PROBE_GUARDRAILS,
    Event,
    Server,
    busy_for,
    call,
    events,
    find_pid,
    open_session,
    probe_marker,
    token_client,
    verify_arguments,
    writes_pid_then_blocks,
)

pytestmark = pytest.mark.anyio

LISTING_BUDGET_BYTES = 16 * 1024


async def test_the_tool_listing_on_the_wire_stays_within_its_budget(server: Server) -> None:
    async with token_client(server) as http:
        session = await open_session(http, server)
        with anyio.fail_after(30):
            response = await http.post(session.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=session.headers())
    body = [line for line in response.text.splitlines() if line.startswith("data:") and '"tools"' in line]

    assert len(body) == 1
    size = len(body[0][5:].strip().encode())
    assert size <= LISTING_BUDGET_BYTES, size


async def test_every_sse_event_has_an_id_and_a_dropped_stream_resumes_with_what_it_missed(server: Server) -> None:
    async with token_client(server) as http:
        session = await open_session(http, server)
        seen: list[Event] = []
        with anyio.fail_after(120):
            request = call(7, "verify", verify_arguments(busy_for(2.0), trials=2))
            async with http.stream("POST", session.url, json=request, headers=session.headers()) as response:
                async for event in events(response):
                    seen.append(event)
                    if event.data is not None and event.data.get("method") == "notifications/progress":
                        break  # the connection drops mid-call
            resumed: list[Event] = []
            async with http.stream("GET", session.url, headers=session.headers(**{"last-event-id": seen[-1].id or ""})) as response:
                assert response.status_code == 200, await response.aread()
                async for event in events(response):
                    resumed.append(event)
                    if event.data is not None and event.data.get("id") == 7:
                        break

    assert all(event.id for event in seen + resumed), seen + resumed
    answer = resumed[-1].data
    assert answer is not None and answer.get("id") == 7, resumed
    assert answer["result"]["structuredContent"]["state"] == "correct", answer
    seen_ids = {event.id for event in seen}
    assert not seen_ids & {event.id for event in resumed}, "replayed events the client had already received"


async def test_a_stream_resumes_only_in_the_session_that_received_it(server: Server) -> None:
    async with token_client(server) as http:
        first = await open_session(http, server)
        second = await open_session(http, server)
        with anyio.fail_after(60):
            async with http.stream("POST", first.url, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers=first.headers()) as response:
                first_events = [event async for event in events(response)]
            last = next(event.id for event in first_events if event.id)
            got = await http.get(second.url, headers=second.headers(**{"last-event-id": last}))

    assert '"tools"' not in got.text, got.text[:300]


async def test_a_cancelled_request_gets_no_reply_over_http(server: Server) -> None:
    marker = probe_marker()
    async with token_client(server) as http:
        session = await open_session(http, server)
        replies: list[dict[str, Any]] = []
        with anyio.fail_after(120):
            request = call(11, "verify", verify_arguments(writes_pid_then_blocks(marker), guardrails=PROBE_GUARDRAILS))
            async with http.stream("POST", session.url, json=request, headers=session.headers()) as response:
                await find_pid(marker)
                cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 11, "reason": "changed my mind"}}
                assert (await http.post(session.url, json=cancel, headers=session.headers())).status_code == 202
                async for event in events(response):  # the stream ends without an answer
                    if event.data is not None and event.data.get("id") == 11:
                        replies.append(event.data)
            after = await http.post(session.url, json=call(12, "verify", verify_arguments(CORRECT_CPP)), headers=session.headers())

    assert replies == []
    assert '"state":"correct"' in after.text, after.text[-500:]
