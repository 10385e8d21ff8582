"""A module-scoped in-memory client for the server tests (fixtures live in mcp_support)."""

from mcp_support import anyio_backend, client  # noqa: F401 - re-exported fixtures
