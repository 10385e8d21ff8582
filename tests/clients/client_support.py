"""What the client tests share: quick run settings, scripted models, a local HTTP server, a translate memo."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import uvicorn

from kfoundry import examples
from kfoundry.clients.providers import ModelReply, ModelRequest
from kfoundry.clients.providers.scripted import ScriptedModel
from kfoundry.clients.records import RunSettings, RunSummary
from kfoundry.clients.runner import Job, run_job
from kfoundry.clients.session import ToolSession
from kfoundry.schema import TranslateResult

CORRECT = {"example": "elementwise/cpp"}
NO_CODE = "I would rather explain the idea than write the module."
SYNTAX_ERROR = {"example": "elementwise/cpp", "edits": [["const float v = x[i];", "const float v = x[i]"]]}
WRONG_VALUES = {"example": "elementwise/cpp", "edits": [["y[i] = v / (1.0f + std::exp(-v)) * scale;", "y[i] = v / (1.0f + std::exp(-v));"]]}
CORRECT_SOURCE = examples.source("elementwise", "cpp")


def quick(**overrides: Any) -> RunSettings:
    """Settings that keep each verify/profile around a second: one trial, few reps, eager baseline only."""
    values: dict[str, Any] = {
        "backend": "cpp", "iterations": 1, "baselines": ["eager"], "reps": 3, "warmup": 1, "trials": 1, "profile_trials": 1, "tool_timeout_s": 120,
    }
    return RunSettings(**{**values, **overrides})


class MemoSession(ToolSession):
    """translate_reference answers the same for the same arguments; the tests pay for it once per module."""

    def __init__(self, inner: ToolSession) -> None:
        super().__init__(inner.client, inner.info, inner.timeout_s, inner.link)
        self.memo: dict[tuple[Any, ...], TranslateResult] = {}

    async def translate(self, reference: str, backend: str, source_backend: str = "pytorch", source_code: str | None = None) -> TranslateResult:
        key = (reference, backend, source_backend, source_code)
        if key not in self.memo:
            self.memo[key] = await super().translate(reference, backend, source_backend, source_code)
        return self.memo[key]


class Scripts:
    """One scripted model per role, kept so a test can read the prompts they received."""

    def __init__(self, generation: list[Any], analysis: list[Any] | None = None) -> None:
        self.generation = ScriptedModel("generation", role="generation", items=generation)
        self.analysis = ScriptedModel("analysis", role="analysis", items=analysis or [])

    def factory(self, spec: str, role: str) -> Any:
        return self.generation if role == "generation" else self.analysis

    def prompts(self) -> list[str]:
        return [r.prompt for r in self.generation.requests]


async def run_scripted(
    session: ToolSession, out: Path, scripts: Scripts, settings: RunSettings, analysis_model: str | None = "scripted:analysis", within: float = 120.0
) -> RunSummary:
    job = Job(problems=["elementwise"], models=["scripted:generation"], analysis_model=analysis_model, settings=settings, out=out, command=["test"])
    with anyio.fail_after(within):
        runs = await run_job(job, server=session, model_factory=scripts.factory)
    assert len(runs) == 1
    return runs[0]


class Gauge:
    """Wraps a model, records the most calls in flight at once, and holds calls until ``limit`` are in flight."""

    def __init__(self, inner: ScriptedModel, limit: int) -> None:
        self.inner, self.limit = inner, limit
        self.spec = inner.spec
        self.active = self.peak = 0
        self.full = anyio.Event()

    async def complete(self, request: ModelRequest) -> ModelReply:
        self.active += 1
        self.peak = max(self.peak, self.active)
        if self.active >= self.limit:
            self.full.set()
        try:
            with anyio.fail_after(30):
                await self.full.wait()
            return await self.inner.complete(request)
        finally:
            self.active -= 1

    async def aclose(self) -> None:
        return None


class _Server(uvicorn.Server):
    """uvicorn that says when it is listening, so tests wait on an event rather than polling."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app on 127.0.0.1 at a free port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve, [sock])
        with anyio.fail_after(30):
            await server.ready.wait()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
    sock.close()
