"""``kfoundry serve --transport http``: streamable HTTP with bearer tokens and Host/Origin checks."""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kfoundry import __version__
from kfoundry.errors import BadRequest
from kfoundry.server.app import Live, build_server
from kfoundry.server.auth import NamedTokenVerifier, load_tokens
from kfoundry.server.events import SessionEvents, SessionScope

logger = logging.getLogger(__name__)

MCP_PATH = "/mcp"
DEFAULT_MAX_BODY = 16 << 20
#: how long a client whose stream dropped waits before resuming it (the SSE ``retry`` field)
RETRY_MS = 1000
#: a draining server stops once nothing was in flight for this long (a client's follow-up requests come within it)
QUIET_S = 1.0
#: after draining, how long idle connections and open SSE streams get to close before they are cut
CLOSE_S = 5


@dataclass
class HttpOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    token_file: Path | None = None
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    certfile: Path | None = None
    keyfile: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    graceful_shutdown_s: float = 300.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 and not limit % (1 << 20) else f"{limit} bytes"


class ExplainOversize:
    """Turns the SDK's bare ``413 Request body too large`` into a JSON-RPC error that names the limit.

    The MCP client surfaces a JSON-RPC error body from a non-2xx reply as the call's error; a
    plain-text 413 reaches the caller only as "Server returned an error response".
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.body = json.dumps({
            "jsonrpc": "2.0", "id": None,
            "error": {
                "code": -32600,
                "message": f"request body too large: this server accepts at most {_size(limit)} per request "
                           "(kfoundry serve --max-body-mb); send only the module sources",
            },
        }).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced = False

        async def explain(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 413:
                replaced = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
                await send({**message, "headers": headers})
                await send({"type": "http.response.body", "body": self.body, "more_body": False})
            elif not replaced:
                await send(message)

        await self.app(scope, receive, explain)


def build_app(options: HttpOptions, tokens: dict[str, str] | None = None, live: Live | None = None) -> object:
    """The ASGI app. Raises BadRequest when a non-loopback bind has no token."""
    tokens = load_tokens(options.token_file) if tokens is None else tokens
    if not tokens and not is_loopback(options.host):
        raise BadRequest(
            f"refusing to serve on {options.host} without a token: anyone who can reach it could run code here. "
            "Set KFOUNDRY_TOKEN (or KFOUNDRY_TOKENS=name:token,...) or pass --token-file"
        )
    live = live or Live()
    mcp = build_server(NamedTokenVerifier(tokens) if tokens else None, live)

    @mcp.custom_route("/healthz", methods=["GET"])
    async def healthz(request: Request) -> Response:
        runtime = live.runtime
        status = "starting" if runtime is None else "draining" if live.draining else "ok"
        body = {"status": status, "version": __version__}
        if runtime is not None:
            body["devices"] = runtime.pool.status()
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", *options.allowed_hosts]
    if not is_loopback(options.host) and options.host not in ("0.0.0.0", "::"):
        hosts.append(f"{options.host}:*")
    origins = ["http://127.0.0.1:*", "http://localhost:*", "https://localhost:*", *options.allowed_origins]
    security = TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)
    app = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH, transport_security=security, max_request_body_size=options.max_body_bytes,
        event_store=SessionEvents(), retry_interval=RETRY_MS,
    )
    return Activity(ExplainOversize(SessionScope(app), options.max_body_bytes), live)


class Activity:
    """Keeps ``Live`` told of HTTP requests in flight, so a draining server stops only once it is quiet.

    A GET opens an SSE stream that stays open as long as the client likes; it counts as
    activity when it starts, not as a request in flight.
    """

    def __init__(self, app: ASGIApp, live: Live) -> None:
        self.app = app
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        live = self.live
        if scope["type"] != "http" or not scope["path"].startswith(MCP_PATH):
            await self.app(scope, receive, send)  # health checks poll; they are not clients waiting for answers
            return
        live.last_activity = time.monotonic()
        if scope.get("method") == "GET":
            await self.app(scope, receive, send)
            return
        live.requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            live.requests -= 1
            live.last_activity = time.monotonic()


class DrainingServer(uvicorn.Server):
    """uvicorn that drains on SIGTERM (or Ctrl-C): tool calls in flight are answered, new ones refused
    with a message saying so, and everything else (listings, a client's closing DELETE) still
    served; it stops once nothing has been in flight for ``QUIET_S``, or after ``drain_s``. A
    second signal stops it at once.
    """

    def __init__(self, config: uvicorn.Config, live: Live, drain_s: float) -> None:
        super().__init__(config)
        self.live = live
        self.drain_s = drain_s
        self.drain_started: float | None = None
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: no logging here (it could interrupt a logging call holding its lock).
        if self.drain_started is None and not self.should_exit:
            self.drain_started = time.monotonic()
            self.live.draining = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit:
            if not self._announced:
                self._announced = True
                logger.warning("draining: answering %d tool call(s) in flight, refusing new ones", self.live.tool_calls)
            quiet = self.live.quiet_for() >= QUIET_S
            if quiet or time.monotonic() - self.drain_started >= self.drain_s:
                self.should_exit = True
        return await super().on_tick(counter)


def serve_http(options: HttpOptions) -> None:
    live = Live()
    app = build_app(options, live=live)
    config = uvicorn.Config(
        app, host=options.host, port=options.port, log_level="warning",
        ssl_certfile=str(options.certfile) if options.certfile else None,
        ssl_keyfile=str(options.keyfile) if options.keyfile else None,
        # Drained already: what is left are idle connections and SSE streams that would stay open.
        timeout_graceful_shutdown=CLOSE_S,
    )
    DrainingServer(config, live, options.graceful_shutdown_s).run()
