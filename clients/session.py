"""The client's one MCP connection: stdio subprocess of ``kfoundry serve``, a streamable HTTP URL, or in-process.

``ToolSession`` turns each tool's structured output back into the ``kfoundry.schema`` model it
was made from, and bounds every call in time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CreateMessageRequestParams, CreateMessageResult, TextContent
from pydantic import BaseModel, Field, ValidationError

from kfoundry.clients.link import RESTART_WAIT_S, ConnectionLost, Link
from kfoundry.schema import AnalysisResult, BackendsResult, CompileResult, ProfileResult, TranslateResult, VerifyResult

M = TypeVar("M", bound=BaseModel)
#: The stdio child gets a scrubbed environment (the SDK's default); these pass through.
PASS_ENV_PREFIXES = ("KFOUNDRY_", "TRITON_", "CUDA_", "TORCH_", "OMP_", "NVIDIA_", "LD_")
PASS_ENV = ("PATH", "HOME", "USER", "LANG", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "CC", "CXX")

#: Answers the server's sampling requests (translate_reference with sample=true): text in, text out.
SampleText = Callable[[str, str | None, int], Awaitable[str]]


class ToolCallError(RuntimeError):
    """The server refused a call (bad arguments, unavailable backend) or the connection failed."""


class ServerInfo(BaseModel):
    name: str
    version: str
    protocol: str
    transport: str = Field(description="stdio, http or in-process")
    target: str = Field(description="The command, URL or object it was connected to.")


def stdio_parameters() -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if k.startswith(PASS_ENV_PREFIXES) or k in PASS_ENV}
    return StdioServerParameters(command=sys.executable, args=["-m", "kfoundry.cli", "serve"], env=env)


def _sampling_callback(sample: SampleText) -> Any:
    async def callback(context: Any, params: CreateMessageRequestParams) -> CreateMessageResult:
        texts = [getattr(block, "text", "") for m in params.messages for block in m.content_as_list if block.type == "text"]
        text = await sample("\n\n".join(texts), params.system_prompt, params.max_tokens)
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text=text), model="kfoundry-client", stop_reason="endTurn")

    return callback


def parse_result(model: type[M], data: dict[str, Any]) -> M:
    """``model`` from a tool's structured output, dropping fields a newer server added that this client does not know."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        extras = [e["loc"] for e in exc.errors() if e["type"] == "extra_forbidden"]
        if not extras or len(extras) != len(exc.errors()):
            raise
    for loc in extras:
        target: Any = data
        for key in loc[:-1]:
            target = target[key]
        target.pop(loc[-1], None)
    return model.model_validate(data)


class ToolSession:
    """Typed calls to the kernel-foundry tools over one connected ``mcp.Client``.

    With a ``Link`` (what ``connect`` makes) a call cut short by the server going away, or refused
    while it shuts down, runs again once the server is back (``clients.link``).
    """

    def __init__(self, client: Client, info: ServerInfo, timeout_s: float = 900.0, link: Link | None = None) -> None:
        self._client = client
        self.info = info
        self.timeout_s = timeout_s
        self.link = link

    @property
    def client(self) -> Client:
        """The connected client now (a new one after the server restarted)."""
        if self.link is not None and self.link.client is not None:
            return self.link.client
        return self._client

    async def _call(self, tool: str, arguments: dict[str, Any], model: type[M], timeout_s: float | None = None) -> M:
        bound = timeout_s or self.timeout_s
        sent = {k: v for k, v in arguments.items() if v is not None}
        try:
            if self.link is not None:
                with anyio.fail_after(bound + self.link.restart_wait_s + 30):
                    result = await self.link.call_tool(tool, sent, bound)
            else:
                with anyio.fail_after(bound + 30):
                    result = await self.client.call_tool(tool, sent, read_timeout_seconds=bound)
        except ConnectionLost as exc:
            raise ToolCallError(f"{tool}: {exc}") from exc
        if result.is_error or result.structured_content is None:
            text = " ".join(getattr(block, "text", "") for block in result.content)
            raise ToolCallError(f"{tool}: {text or 'no structured result'}")
        return parse_result(model, dict(result.structured_content))

    async def backends(self) -> BackendsResult:
        return await self._call("backends", {}, BackendsResult, 120)

    async def precisions(self) -> list[str]:
        """The numerics policies ``verify`` accepts, read from its input schema; empty when the schema names none."""
        with anyio.fail_after(120):
            listed = await self.client.list_tools()
        schema = next((t.input_schema for t in listed.tools if t.name == "verify"), {})
        field = schema.get("properties", {}).get("precision", {})
        return [str(name) for name in field.get("enum", [])]

    async def translate(self, reference: str, backend: str, source_backend: str = "pytorch", source_code: str | None = None) -> TranslateResult:
        arguments = {"reference": reference, "target_backend": backend, "source_backend": source_backend, "source_code": source_code}
        return await self._call("translate_reference", arguments, TranslateResult)

    async def compile(self, backend: str, candidate: str) -> CompileResult:
        return await self._call("compile", {"backend": backend, "candidate": candidate}, CompileResult)

    async def verify(self, backend: str, reference: str, candidate: str, **options: Any) -> VerifyResult:
        return await self._call("verify", {"backend": backend, "reference": reference, "candidate": candidate, **options}, VerifyResult)

    async def profile(self, backend: str, reference: str, candidate: str, **options: Any) -> ProfileResult:
        return await self._call("profile", {"backend": backend, "reference": reference, "candidate": candidate, **options}, ProfileResult)

    async def analyze(self, profile: str, candidate: str | None = None) -> AnalysisResult:
        return await self._call("analyze_profile", {"profile": profile, "candidate": candidate}, AnalysisResult, 120)


@asynccontextmanager
async def connect(
    server: Any = None, token: str | None = None, sample: SampleText | None = None, timeout_s: float = 900.0, restart_wait_s: float = RESTART_WAIT_S,
) -> AsyncIterator[ToolSession]:
    """Open a session: ``None`` spawns ``kfoundry serve`` over stdio, an ``http(s)://`` URL connects with
    an optional bearer token, anything else (an ``MCPServer``) is served in-process.

    Over HTTP the session survives a server restart: a call it cut short runs again once the server
    answers, waiting at most ``restart_wait_s``.
    """
    extra: dict[str, Any] = {"sampling_callback": _sampling_callback(sample)} if sample is not None else {}
    async with AsyncExitStack() as stack:
        if server is None:
            params = stdio_parameters()
            target: Any = params
            transport, described = "stdio", " ".join([params.command, *params.args])
        elif isinstance(server, str):
            if not server.startswith(("http://", "https://")):
                raise ValueError(f"--server must be an http(s):// URL of `kfoundry serve --transport http`, not {server!r}")
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=timeout_s + 60)))
            transport, described = "http", server
        else:
            target, transport, described = server, "in-process", type(server).__name__
        if transport == "http":

            async def open_client(inner: AsyncExitStack) -> Client:
                return await inner.enter_async_context(Client(streamable_http_client(server, http_client=http), **extra))

            link = Link(open_client, restart_wait_s)
            group = await stack.enter_async_context(anyio.create_task_group())
            await group.start(link.own)
            stack.callback(link.close)  # runs first: the link's task ends, then the group exits
            client, session_link = link.client, link
        else:
            client, session_link = await stack.enter_async_context(Client(target, **extra)), None
        assert client is not None
        info = ServerInfo(
            name=client.server_info.name, version=client.server_info.version or "", protocol=str(client.protocol_version),
            transport=transport, target=described,
        )
        yield ToolSession(client, info, timeout_s, session_link)
