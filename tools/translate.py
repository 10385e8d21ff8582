"""``translate_reference``: problem analysis plus a ready-to-send generation or translation prompt."""

from __future__ import annotations

from typing import Any

from kfoundry import prompts
from kfoundry.artifacts import new_run
from kfoundry.backends import UnknownBackendError, get_backend
from kfoundry.backends.base import Backend
from kfoundry.errors import BadRequest
from kfoundry.runner.session import Ending, Plan, Session
from kfoundry.schema import ErrorDetail, ProblemAnalysis, TranslateResult
from kfoundry.tools.requests import TranslateRequest
from kfoundry.tools.runtime import Runtime, recording_cancellation, timeout_or_default

DEFAULT_TIMEOUT_S = 120.0


def prompt_context(backend_name: str, reference: str, analysis: ProblemAnalysis | None = None, **extra: Any) -> dict[str, Any]:
    backend = get_backend(backend_name)
    example_reference, example_solution = prompts.oneshot(backend)
    return {
        "reference": reference, "backend": backend.name, "marker": backend.marker, "notes": backend.notes,
        "oneshot_reference": example_reference, "oneshot_solution": example_solution, "analysis": analysis, **extra,
    }


def render_prompt(reference: str, target_backend: str, source_backend: str = "pytorch", source_code: str | None = None, analysis: ProblemAnalysis | None = None) -> str:
    """The prompt alone (no worker): deterministic for the same arguments."""
    if source_backend == "pytorch":
        return prompts.render("generate", **prompt_context(target_backend, reference, analysis))
    source = get_backend(source_backend)
    # A backend may say what translating into it from a given source must change (CUDA to HIP: warp width, runtime API).
    pair = getattr(get_backend(target_backend), "translate_from", {}).get(source.name)
    notes = f"{source.notes}\n\n{pair}" if pair else source.notes
    return prompts.render(
        "translate",
        **prompt_context(target_backend, reference, analysis, source_backend=source.name, source_candidate=source_code, source_notes=notes),
    )


def prompt_target(name: str) -> Backend:
    """The backend a prompt is written for: any registered one, whether or not this host can run it.

    A prompt needs only the backend's notes and one-shot example, so a laptop without an AMD, Intel
    or Apple GPU still gets HIP, SYCL and Metal prompts; the reference is analysed on this host's device.

    Raises:
        BadRequest: ``name`` is not a registered backend.
    """
    try:
        return get_backend(name.strip().lower())
    except UnknownBackendError as exc:
        raise BadRequest(str(exc)) from exc


async def translate_reference(rt: Runtime, request: TranslateRequest, translation: str | None = None) -> TranslateResult:
    target = prompt_target(request.target_backend)
    reference, source_backend, source_code = request.reference, request.source_backend, request.source_code
    run = new_run("translate")
    run.write("reference.py", reference)
    if source_code:
        run.write(f"source-{source_backend}.py", source_code)
    with recording_cancellation(run, "translate_reference"):
        analysis, failure = await _analyze(rt, reference, target, timeout_or_default(request.timeout_s, DEFAULT_TIMEOUT_S), run)
    prompt = render_prompt(reference, target.name, source_backend, source_code, analysis)
    run.write("prompt.md", prompt)
    result = TranslateResult(
        prompt=prompt, analysis=analysis, analysis_error=failure, target_backend=target.name, source_backend=source_backend,
        translation=translation, translation_source="sampling" if translation else "none", run_id=run.id,
    )
    run.write("result.json", result)
    await rt.progress(1.0, "prompt ready" if failure is None else "prompt ready, without an analysis")
    return result


async def _analyze(rt: Runtime, reference: str, backend: Backend, timeout_s: float, run: Any) -> tuple[ProblemAnalysis | None, ErrorDetail | None]:
    """Run the reference once in a reference worker (it is user code) under FLOP counting and op tracing."""
    async with rt.slot(backend, exclusive=False) as device:
        await rt.progress(0.1, "analyzing the reference")
        worker = await rt.pool.acquire(device)
        try:
            session = Session(backend=backend.name, device=device, precision="strict", problem=reference, candidate=None,
                              reference_worker=worker, candidate_worker=None)
            report = await session.run(Plan(trials=[], analyze=True), timeout_s)
        finally:
            await rt.pool.release(worker, run.path / "reference-worker")
    if report.ending is Ending.done and report.analysis is not None:
        return report.analysis, None
    return None, report.error or ErrorDetail(type="AnalysisError", message="the reference produced no analysis")
