"""One in-process kernel-foundry server per test module, behind a translate-memoizing session."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from client_support import MemoSession  # noqa: E402

from kfoundry.clients.session import connect  # noqa: E402
from kfoundry.server.app import build_server  # noqa: E402


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def session(anyio_backend: str) -> AsyncIterator[MemoSession]:
    async with connect(build_server(), timeout_s=120) as connected:
        yield MemoSession(connected)
