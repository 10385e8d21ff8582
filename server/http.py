"""``kfoundry serve --transport http``: streamable HTTP with bearer tokens and Host/Origin checks."""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

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


def build_app(options: HttpOptions, tokens: dict[str, str] | None = None) -> object:
    """The ASGI app. Raises BadRequest when a non-loopback bind has no token."""
    tokens = load_tokens(options.token_file) if tokens is None else tokens
    if not tokens and not is_loopback(options.host):
        raise BadRequest(
            f"refusing to serve on {options.host} without a token: anyone who can reach it could run code here. "
            "Set KFOUNDRY_TOKEN (or KFOUNDRY_TOKENS=name:token,...) or pass --token-file"
        )
    live = Live()
    mcp = build_server(NamedTokenVerifier(tokens) if tokens else None, live)

    @mcp.custom_route("/healthz", methods=["GET"])
    async def healthz(request: Request) -> Response:
        runtime = live.runtime
        body = {"status": "ok" if runtime is not None else "starting", "version": __version__}
        if runtime is not None:
            body["devices"] = runtime.pool.status()
        return JSONResponse(body, status_code=200 if runtime is not None else 503)

    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", *options.allowed_hosts]
    if not is_loopback(options.host) and options.host not in ("0.0.0.0", "::"):
        hosts.append(f"{options.host}:*")
    origins = ["http://127.0.0.1:*", "http://localhost:*", "https://localhost:*", *options.allowed_origins]
    security = TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)
    app = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH, transport_security=security, max_request_body_size=options.max_body_bytes,
        event_store=SessionEvents(), retry_interval=RETRY_MS,
    )
    return ExplainOversize(SessionScope(app), options.max_body_bytes)


def serve_http(options: HttpOptions) -> None:
    app = build_app(options)
    config = uvicorn.Config(
        app, host=options.host, port=options.port, log_level="warning",
        ssl_certfile=str(options.certfile) if options.certfile else None,
        ssl_keyfile=str(options.keyfile) if options.keyfile else None,
        timeout_graceful_shutdown=int(options.graceful_shutdown_s),
    )
    uvicorn.Server(config).run()
