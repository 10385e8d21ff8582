"""The MCP server: registers the tools, resources and prompts on an ``MCPServer``.

Each tool's arguments are the fields of its request model (``tools/requests.py``): the tool
functions take the validated model, and the signature MCPServer reads is derived from it.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from mcp import MCPError
from mcp.server.auth.provider import TokenVerifier
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, MCPServer, Resolve, Sample
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError, UnexpectedToolError
from mcp.types import (
    INVALID_PARAMS,
    CallToolResult,
    CreateMessageResult,
    GetPromptResult,
    InputRequiredResult,
    SamplingMessage,
    TextContent,
    ToolAnnotations,
)
from mcp.types import Tool as ListedTool
from pydantic import AnyUrl, BaseModel, ValidationError

from kfoundry import __version__
from kfoundry import examples as problem_library
from kfoundry.artifacts import acting_for, list_runs, open_run
from kfoundry.errors import KfoundryError
from kfoundry.runner.pool import WorkerPool, driver_gpus
from kfoundry.schema import AnalysisResult, BackendsResult, CompileResult, ProfileResult, TranslateResult, VerifyResult
from kfoundry.server.auth import auth_settings, caller
from kfoundry.server.descriptions import DESCRIPTIONS, INSTRUCTIONS, TITLES
from kfoundry.server.listing import SCHEMA_URI, compact_input, outline_output, result_text
from kfoundry.tools.analyze import analyze_profile as analyze_tool
from kfoundry.tools.backends import list_backends
from kfoundry.tools.compile import compile_candidate
from kfoundry.tools.profile import profile as profile_tool
from kfoundry.tools.requests import AnalyzeRequest, CompileRequest, ProfileRequest, TranslateRequest, VerifyRequest, explain
from kfoundry.tools.runtime import Runtime
from kfoundry.tools.translate import render_prompt
from kfoundry.tools.translate import translate_reference as translate_tool
from kfoundry.tools.verify import verify as verify_tool

logger = logging.getLogger(__name__)

RequestTool = Callable[..., Awaitable[Any]]


def _flattened(fn: RequestTool) -> tuple[type[BaseModel], RequestTool]:
    """``fn(request, ...)`` as a function whose parameters are the request model's fields, then ``fn``'s others.

    MCPServer builds a tool's input schema from its function's signature, so every field
    becomes a top-level argument with the model's type, default, bounds and description.
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    first, *rest = inspect.signature(fn).parameters.values()
    request: type[BaseModel] = hints[first.name]
    fields = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[field.annotation, field],
            default=inspect.Parameter.empty if field.is_required() else field.get_default(call_default_factory=True),
        )
        for name, field in request.model_fields.items()
    ]
    others = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name]) for p in rest]

    async def tool(**arguments: Any) -> Any:
        values = {name: arguments.pop(name) for name in request.model_fields}
        return await fn(request.model_validate(values), **arguments)

    tool.__name__, tool.__qualname__, tool.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    tool.__signature__ = inspect.Signature([*fields, *others], return_annotation=hints["return"])  # type: ignore[attr-defined]
    tool.__annotations__ = {p.name: p.annotation for p in [*fields, *others]} | {"return": hints["return"]}
    return request, tool


#: a tool call refused while the server drains says this; ``clients.link`` calls again once the server is back
DRAINING = "the server is shutting down"


class Live:
    """The running server's state for what sits outside MCP requests: health checks and a draining shutdown.

    ``requests`` counts HTTP requests in flight other than SSE streams (which stay open), and
    ``tool_calls`` the tool calls in flight on any transport.
    """

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.draining = False
        self.tool_calls = 0
        self.requests = 0
        self.last_activity = time.monotonic()

    def quiet_for(self) -> float:
        """Seconds since anything was in flight (0 while something is)."""
        return 0.0 if self.tool_calls or self.requests else time.monotonic() - self.last_activity


class KfoundryServer(MCPServer):
    """An ``MCPServer`` whose tools take request models, and whose tool errors tell the caller what to send.

    Arguments that fail validation come back as one line per field: what it allows, what was
    sent, what it takes (pydantic's own text names internal models and links to its docs). A
    ``KfoundryError`` is an anticipated failure, so its message reaches the client; the SDK
    withholds the text of any other exception.

    Tools and resources run ``acting_for`` the caller's token name, so the runs they make are
    the caller's and the runs they open or list are only the caller's ("local", over stdio: all).

    What clients read is kept small (``listing``): compact schemas in ``tools/list``, and a
    result's text as a summary line plus compact JSON beside the unchanged structured content.
    """

    def __init__(self, *args: Any, live: Live | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._requests: dict[str, type[BaseModel]] = {}
        self.live = live or Live()

    def request_tool(self, name: str, **options: Any) -> Callable[[RequestTool], RequestTool]:
        """Register ``fn(request: SomeRequest, ...)`` as tool ``name`` (``options`` as for ``tool()``)."""

        def register(fn: RequestTool) -> RequestTool:
            request, tool = _flattened(fn)
            self._requests[name] = request
            self.add_tool(tool, name=name, **options)
            return fn

        return register

    async def list_tools(self) -> list[ListedTool]:
        """The tools with compact schemas (``listing``); the full ones are the ``kfoundry://schemas/{tool}`` resources."""
        return [
            tool.model_copy(update={
                "input_schema": compact_input(tool.input_schema),
                "output_schema": outline_output(tool.output_schema) if tool.output_schema else None,
            })
            for tool in await super().list_tools()
        ]

    async def full_schemas(self, name: str) -> dict[str, Any]:
        """A tool's input and output schemas as pydantic writes them, every field described."""
        tool = next((t for t in await super().list_tools() if t.name == name), None)
        if tool is None:
            known = ", ".join(t.name for t in await super().list_tools())
            raise ResourceNotFoundError(f"no tool named {name!r}; schemas exist for: {known}")
        return {"input": tool.input_schema, "output": tool.output_schema}

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        live = self.live
        if live.draining:
            raise ToolError(f"Error executing tool {name}: {DRAINING}; calls in flight are answered, new ones refused. Call again once it is back")
        live.tool_calls += 1
        try:
            result = await self._call_tool(name, arguments, context)
        finally:
            live.tool_calls -= 1
            live.last_activity = time.monotonic()
        if isinstance(result, CallToolResult) and not result.is_error and result.structured_content is not None:
            result.content = [TextContent(type="text", text=result_text(name, result.structured_content))]
        return result

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Context[Any, Any] | None = None
    ) -> GetPromptResult | InputRequiredResult:
        # The SDK answers an unknown name with error code 0 and a logged traceback; it is a bad parameter.
        known = [p.name for p in await self.list_prompts()]
        if name not in known:
            offered = f"one of: {', '.join(known)}" if known else "none: this server offers tools and resources, no prompts"
            raise MCPError(code=INVALID_PARAMS, message=f"unknown prompt {name!r}; prompts offered: {offered}", data={"name": name})
        return await super().get_prompt(name, arguments, context)

    async def _call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            with acting_for(caller()):
                return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause, request = exc.__cause__, self._requests.get(name)
            if isinstance(cause, KfoundryError):
                raise ToolError(f"Error executing tool {name}: {cause}") from cause
            # Rejected by the SDK's check of the arguments, or by the request model's checks across fields.
            if isinstance(cause, ValidationError) and (
                not isinstance(exc, UnexpectedToolError) or (request is not None and cause.title == request.__name__)
            ):
                raise ToolError(f"Error executing tool {name}: {explain(cause, request)}") from cause
            raise

    async def read_resource(
        self, uri: AnyUrl | str, context: Context[Any, Any] | None = None
    ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        with acting_for(caller()):
            return await super().read_resource(uri, context)


def _progress(ctx: Context) -> Any:
    """Progress out of a total of 1.0 that only rises, as the protocol requires.

    A stage that reports a fraction at or below the last one sent (a queue position, another
    trial of the same stage) moves it up by a fiftieth of what is left, so it never reaches 1.0,
    which is sent once, with the outcome.
    """
    last = [-1.0]

    async def report(fraction: float, message: str) -> None:
        if last[0] >= 1.0:
            return
        value = 1.0 if fraction >= 1.0 else min(max(fraction, 0.0), 0.999)
        if value <= last[0]:
            value = last[0] + (1.0 - last[0]) / 50
        last[0] = value
        await ctx.report_progress(round(value, 6) if value < 1.0 else 1.0, 1.0, message)

    return report


def _ask_client_model(
    reference: str, target_backend: str, ctx: Context, source_backend: str = "pytorch", source_code: str | None = None, sample: bool = False
) -> Sample | None:
    """Ask the client's own model for the translation, only when asked to and the client can sample.

    Built from the tool arguments alone, so the request is identical on every retry round.
    """
    caps = ctx.client_capabilities
    if not sample or caps is None or caps.sampling is None:
        return None
    try:
        request = TranslateRequest(reference=reference, target_backend=target_backend, source_backend=source_backend, source_code=source_code)
        prompt = render_prompt(request.reference, request.target_backend, request.source_backend, request.source_code)
    except (ValidationError, KfoundryError, KeyError):
        return None
    return Sample([SamplingMessage(role="user", content=TextContent(type="text", text=prompt))], max_tokens=8192)


def _sampled_text(drafted: CreateMessageResult | None) -> str | None:
    if drafted is None:
        return None
    blocks = drafted.content if isinstance(drafted.content, list) else [drafted.content]
    text = "".join(getattr(b, "text", "") for b in blocks)
    return text or None


def _runtime(ctx: Context) -> Runtime:
    runtime: Runtime = ctx.request_context.lifespan_context
    return runtime.for_call(_progress(ctx), caller())


def build_server(token_verifier: TokenVerifier | None = None, live: Live | None = None) -> KfoundryServer:
    """The MCP server; with ``token_verifier`` its HTTP transport requires bearer tokens."""
    holder = live or Live()

    @asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[Runtime]:
        async with WorkerPool() as pool:
            pool.warm("cpu")
            for index in range(driver_gpus()):
                pool.warm(f"cuda:{index}")
            holder.runtime = Runtime(pool)
            try:
                yield holder.runtime
            finally:
                holder.runtime = None

    auth = {"token_verifier": token_verifier, "auth": auth_settings()} if token_verifier is not None else {}
    mcp = KfoundryServer("kernel-foundry", version=__version__, instructions=INSTRUCTIONS, lifespan=lifespan, live=holder, **auth)
    # Hints, set on purpose: compile/verify/profile/translate_reference run submitted code in sandboxed workers
    # and every call records a new run (so neither read-only nor idempotent); nothing is overwritten or deleted
    # on the caller's behalf (quota eviction of old runs is housekeeping), and no tool reaches outside this host.
    runs_code = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
    records = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
    reads = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

    def options(name: str, annotations: ToolAnnotations) -> dict[str, Any]:
        return {"name": name, "title": TITLES[name], "description": DESCRIPTIONS[name], "annotations": annotations}

    @mcp.request_tool(**options("compile", runs_code))
    async def compile_(request: CompileRequest, ctx: Context) -> CompileResult:
        return await compile_candidate(_runtime(ctx), request)

    @mcp.request_tool(**options("verify", runs_code))
    async def verify(request: VerifyRequest, ctx: Context) -> VerifyResult:
        return await verify_tool(_runtime(ctx), request)

    @mcp.request_tool(**options("profile", runs_code))
    async def profile(request: ProfileRequest, ctx: Context) -> ProfileResult:
        return await profile_tool(_runtime(ctx), request)

    # Runs no submitted code, but records the analysis as a run of the caller's.
    @mcp.request_tool(**options("analyze_profile", records))
    async def analyze_profile(request: AnalyzeRequest) -> AnalysisResult:
        return await analyze_tool(request)

    @mcp.request_tool(**options("translate_reference", runs_code))
    async def translate_reference(
        request: TranslateRequest, ctx: Context, drafted: Annotated[CreateMessageResult | None, Resolve(_ask_client_model)] = None
    ) -> TranslateResult:
        return await translate_tool(_runtime(ctx), request, translation=_sampled_text(drafted))

    @mcp.tool(**options("backends", reads))
    async def backends(ctx: Context) -> BackendsResult:
        return list_backends(_runtime(ctx).pool)

    _resources(mcp)
    return mcp


def _resources(mcp: KfoundryServer) -> None:
    """Runs, the bundled problem library and the tools' full schemas, as MCP resources.

    A name or id that names nothing is ``ResourceNotFoundError`` (JSON-RPC -32602, invalid params).
    """

    @mcp.resource("kfoundry://runs", mime_type="application/json", description="The most recent run ids, newest first.")
    def runs() -> str:
        return json.dumps(list_runs())

    @mcp.resource("kfoundry://runs/{run_id}/{artifact}", mime_type="text/plain", description="One artifact of a run (result.json, candidate.py, reference.py, job.json).")
    def run_artifact(run_id: str, artifact: str) -> str:
        try:
            run = open_run(run_id)
        except KfoundryError as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        path = (run.path / artifact).resolve()
        if path.parent != run.path.resolve() or not path.is_file():
            present = sorted(p.name for p in run.path.iterdir() if p.is_file())
            raise ResourceNotFoundError(f"run {run_id} has no artifact {artifact!r}; it has: {', '.join(present) or 'none yet'}")
        return path.read_text(errors="replace")

    @mcp.resource("kfoundry://problems", mime_type="application/json", description="Bundled example problems.")
    def problems() -> str:
        return json.dumps([p.model_dump() for p in problem_library.problems()])

    @mcp.resource("kfoundry://problems/{name}/{part}", mime_type="text/x-python", description="A bundled problem's reference.py or a solution (cpp, triton).")
    def problem_part(name: str, part: str) -> str:
        try:
            return problem_library.source(name, part)
        except KeyError as exc:
            # str(KeyError) quotes its message a second time
            raise ResourceNotFoundError(str(exc.args[0]) if exc.args else f"no problem part {name}/{part}") from exc

    @mcp.resource(SCHEMA_URI, mime_type="application/json", description="A tool's full input and output JSON schemas, every field described.")
    async def tool_schemas(tool: str) -> str:
        return json.dumps(await mcp.full_schemas(tool))
