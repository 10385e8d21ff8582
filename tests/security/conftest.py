"""One real HTTP server with alice's and bob's tokens, shared by the tenancy checks (helpers from tests/http)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "http"))

from http_support import Server, start_server, stop_server  # noqa: E402 - found through the path set above


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
async def server(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """``kfoundry serve --transport http`` on a free loopback port with tokens for alice and bob."""
    running = await start_server(tmp_path_factory.mktemp("security-home"))
    try:
        yield running
    finally:
        await stop_server(running)
