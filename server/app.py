"""The MCP server: registers the tools, resources and prompts on an ``MCPServer``."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from mcp.server.auth.provider import TokenVerifier
from mcp.server.mcpserver import Context, MCPServer, Resolve, Sample
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import CreateMessageResult, SamplingMessage, TextContent, ToolAnnotations
from pydantic import Field

from kfoundry import __version__
from kfoundry import examples as problem_library
from kfoundry.artifacts import list_runs, open_run
from kfoundry.errors import KfoundryError
from kfoundry.schema import AnalysisResult, BackendsResult, CompileResult, ProfileResult, TranslateResult, VerifyResult
from kfoundry.server.auth import auth_settings, caller
from kfoundry.server.descriptions import DESCRIPTIONS, INSTRUCTIONS
from kfoundry.runner.pool import WorkerPool, gpu_count
from kfoundry.tools.analyze import analyze_profile as analyze_tool
from kfoundry.tools.backends import list_backends
from kfoundry.tools.compile import compile_candidate
from kfoundry.tools.profile import Baseline
from kfoundry.tools.profile import profile as profile_tool
from kfoundry.tools.runtime import Runtime
from kfoundry.tools.translate import check_translation_args, render_prompt
from kfoundry.tools.translate import translate_reference as translate_tool
from kfoundry.tools.verify import verify as verify_tool
from kfoundry.verify.guardrails import Guardrails

logger = logging.getLogger(__name__)

Backend = Annotated[str, Field(description="Kernel backend: 'cpp' or 'triton' (call `backends` for what this host offers).")]
Reference = Annotated[str, Field(description="KernelBench problem source: class Model(nn.Module), get_inputs(), get_init_inputs().")]
Candidate = Annotated[str, Field(description="Full Python module source defining class ModelNew (or NewModel) with Model's __init__ signature.")]
Timeout = Annotated[float | None, Field(default=None, gt=0, le=3600, description="Kill the job after this many seconds (state 'timeout').")]
Precision = Annotated[
    Literal["strict", "tf32", "bf16", "fp16"],
    Field(description="Numerics policy. 'strict' (default): the problem's dtypes, no TF32, no downcasts, atol/rtol decide. "
                      "'tf32', 'bf16', 'fp16': the candidate may compute at that precision (accumulating in fp32); it is judged "
                      "against a float64 oracle within 2x the error of an honest run at that precision, and timed against "
                      "baselines given the same freedom and against strict ones."),
]
Stress = Annotated[
    list[Literal["signed", "large", "tiny"]] | None,
    Field(description="Extra trials on stress inputs: 'signed' (random signs), 'large' (x 2^16), 'tiny' (x 2^-20). A family "
                      "is dropped, and said so, when the reference itself goes non-finite on it."),
]


def _progress(ctx: Context) -> Any:
    async def report(fraction: float, message: str) -> None:
        await ctx.report_progress(fraction, 1.0, message)

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
        check_translation_args(reference, target_backend, source_backend, source_code)
        prompt = render_prompt(reference, target_backend.strip().lower(), source_backend, source_code)
    except (KfoundryError, KeyError):
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


class Live:
    """The running server's runtime, for routes that sit outside MCP requests (health checks)."""

    runtime: Runtime | None = None


def build_server(token_verifier: TokenVerifier | None = None, live: Live | None = None) -> MCPServer:
    """The MCP server; with ``token_verifier`` its HTTP transport requires bearer tokens."""
    holder = live or Live()

    @asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[Runtime]:
        async with WorkerPool() as pool:
            pool.warm("cpu")
            for index in range(gpu_count()):
                pool.warm(f"cuda:{index}")
            holder.runtime = Runtime(pool)
            try:
                yield holder.runtime
            finally:
                holder.runtime = None

    auth = {"token_verifier": token_verifier, "auth": auth_settings()} if token_verifier is not None else {}
    mcp = MCPServer("kernel-foundry", version=__version__, instructions=INSTRUCTIONS, lifespan=lifespan, **auth)
    heavy = ToolAnnotations(read_only_hint=True, open_world_hint=False, idempotent_hint=False)

    @mcp.tool(name="compile", description=DESCRIPTIONS["compile"], annotations=heavy)
    async def compile_(
        backend: Backend,
        candidate: Candidate,
        ctx: Context,
        reference: Annotated[str | None, Field(description="Optional problem source: kernels that compile on first launch (Triton on a GPU) are launched once on its inputs so their registers/spills/shared memory can be reported.")] = None,
        timeout_s: Timeout = None,
    ) -> CompileResult:
        try:
            return await compile_candidate(_runtime(ctx), backend, candidate, timeout_s, reference)
        except KfoundryError as exc:
            raise ToolError(str(exc)) from exc

    @mcp.tool(name="verify", description=DESCRIPTIONS["verify"], annotations=heavy)
    async def verify(
        backend: Backend,
        reference: Reference,
        candidate: Candidate,
        ctx: Context,
        trials: Annotated[int, Field(ge=1, le=100, description="Trials with fresh secret-seeded inputs.")] = 5,
        atol: Annotated[float | None, Field(ge=0, description="Absolute tolerance (default: 1e-4 fp32, 1e-2 fp16/bf16).")] = None,
        rtol: Annotated[float | None, Field(ge=0, description="Relative tolerance (default: as atol).")] = None,
        guardrails: Annotated[Guardrails | None, Field(description="Extra required/banned regex rules.")] = None,
        timeout_s: Timeout = None,
        precision: Precision = "strict",
        stress: Stress = None,
    ) -> VerifyResult:
        try:
            return await verify_tool(_runtime(ctx), backend, reference, candidate, trials, atol, rtol, guardrails, timeout_s, precision, stress)
        except KfoundryError as exc:
            raise ToolError(str(exc)) from exc

    @mcp.tool(name="profile", description=DESCRIPTIONS["profile"], annotations=heavy)
    async def profile(
        backend: Backend,
        reference: Reference,
        candidate: Candidate,
        ctx: Context,
        baselines: Annotated[list[Baseline] | None, Field(description="Baselines to time: 'eager', 'compile' (default both).")] = None,
        hardware_counters: Annotated[bool, Field(description="Collect Nsight Compute counters (NVIDIA GPUs only).")] = False,
        reps: Annotated[int, Field(ge=1, le=1000, description="Timed repetitions per contender.")] = 20,
        warmup: Annotated[int, Field(ge=0, le=100, description="Untimed warm-up calls per contender.")] = 3,
        trials: Annotated[int, Field(ge=1, le=100, description="Correctness trials run before timing.")] = 3,
        atol: Annotated[float | None, Field(ge=0)] = None,
        rtol: Annotated[float | None, Field(ge=0)] = None,
        guardrails: Guardrails | None = None,
        cuda_graph: Annotated[bool, Field(description="Time by CUDA-graph replay (for launch-bound kernels; GPU only).")] = False,
        timeout_s: Timeout = None,
        precision: Precision = "strict",
        stress: Stress = None,
    ) -> ProfileResult:
        try:
            return await profile_tool(
                _runtime(ctx), backend, reference, candidate, baselines, hardware_counters, trials, warmup, reps, atol, rtol,
                guardrails, timeout_s, cuda_graph, precision, stress,
            )
        except KfoundryError as exc:
            raise ToolError(str(exc)) from exc

    @mcp.tool(name="analyze_profile", description=DESCRIPTIONS["analyze_profile"], annotations=ToolAnnotations(read_only_hint=True))
    async def analyze_profile(
        profile: Annotated[str, Field(description="A run_id returned by `profile`, or raw profiler text (torch.profiler table, Nsight Compute CSV).")],
        candidate: Annotated[str | None, Field(description="The candidate source, for source-level advice.")] = None,
        images: Annotated[list[str] | None, Field(description="Optional screenshots (base64 PNG) of profiler views; recorded with the run.")] = None,
    ) -> AnalysisResult:
        try:
            return await analyze_tool(profile, candidate, images)
        except KfoundryError as exc:
            raise ToolError(str(exc)) from exc

    @mcp.tool(name="translate_reference", description=DESCRIPTIONS["translate_reference"], annotations=heavy)
    async def translate_reference(
        reference: Reference,
        target_backend: Annotated[str, Field(description="Backend to write the kernel for: 'cpp' or 'triton'.")],
        ctx: Context,
        source_backend: Annotated[str, Field(description="'pytorch' (translate the reference) or a backend whose kernel is given in source_code.")] = "pytorch",
        source_code: Annotated[str | None, Field(description="An existing candidate for source_backend to translate from.")] = None,
        sample: Annotated[bool, Field(description="Also ask your own model (MCP sampling) to write the candidate; ignored when the client cannot sample.")] = False,
        timeout_s: Timeout = None,
        drafted: Annotated[CreateMessageResult | None, Resolve(_ask_client_model)] = None,
    ) -> TranslateResult:
        try:
            return await translate_tool(_runtime(ctx), reference, target_backend, source_backend, source_code, timeout_s, _sampled_text(drafted))
        except KfoundryError as exc:
            raise ToolError(str(exc)) from exc

    @mcp.tool(name="backends", description=DESCRIPTIONS["backends"], annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
    async def backends(ctx: Context) -> BackendsResult:
        return list_backends(_runtime(ctx).pool)

    @mcp.resource("kfoundry://runs", mime_type="application/json", description="The most recent run ids, newest first.")
    def runs() -> str:
        return json.dumps(list_runs())

    @mcp.resource("kfoundry://runs/{run_id}/{artifact}", mime_type="text/plain", description="One artifact of a run (result.json, candidate.py, reference.py, job.json).")
    def run_artifact(run_id: str, artifact: str) -> str:
        try:
            run = open_run(run_id)
        except KfoundryError as exc:
            raise ResourceError(str(exc)) from exc
        path = (run.path / artifact).resolve()
        if path.parent != run.path.resolve() or not path.is_file():
            raise ResourceError(f"run {run_id} has no artifact {artifact!r}; try result.json")
        return path.read_text(errors="replace")

    @mcp.resource("kfoundry://problems", mime_type="application/json", description="Bundled example problems.")
    def problems() -> str:
        return json.dumps([p.model_dump() for p in problem_library.problems()])

    @mcp.resource("kfoundry://problems/{name}/{part}", mime_type="text/x-python", description="A bundled problem's reference.py or a solution (cpp, triton).")
    def problem_part(name: str, part: str) -> str:
        try:
            return problem_library.source(name, part)
        except KeyError as exc:
            raise ResourceError(str(exc)) from exc

    return mcp
