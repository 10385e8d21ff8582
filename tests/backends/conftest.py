"""The backend tests that go through MCP share the server tests' module-scoped in-memory client."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

from mcp_support import anyio_backend, client  # noqa: E402, F401 - re-exported fixtures
