"""One shared real HTTP server for the module-independent checks; tests that stop a server start their own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from http_support import ALLOWED_HOST, ALLOWED_ORIGIN, Server, start_server, stop_server


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
async def server(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """``kfoundry serve --transport http`` on a free loopback port: tokens for alice and bob, a 1 MiB body limit,
    and one extra allowed Host and Origin."""
    running = await start_server(
        tmp_path_factory.mktemp("http-home"), "--max-body-mb", "1", "--allowed-host", f"{ALLOWED_HOST}:*", "--allowed-origin", ALLOWED_ORIGIN,
    )
    try:
        yield running
    finally:
        await stop_server(running)
