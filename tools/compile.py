"""``compile``: import the candidate in a worker so its kernels build, and report toolchain facts."""

from __future__ import annotations

import time

import anyio

from kfoundry.artifacts import Run, new_run
from kfoundry.backends import get_backend
from kfoundry.backends.base import Backend
from kfoundry.runner.session import Ending, Plan, Report, Session, Side
from kfoundry.schema import CompileResult, State
from kfoundry.tools.requests import CompileRequest
from kfoundry.tools.runtime import Runtime, probe, recording_cancellation, resolve_backend, timeout_or_default
from kfoundry.verify.guardrails import Guardrails, check

DEFAULT_TIMEOUT_S = 120.0
# torch-extension sources include <torch/extension.h>: ~35 s per source on two cores.
COMPILE_ONLY_MIN_TIMEOUT_S = 300.0

NEXT = {
    State.compiled: "Built. Call `verify` with the reference to check it against PyTorch.",
    State.compilation_failure: "Fix the errors in diagnostics and call `compile` again.",
    State.generation_failure: "Send a full Python module that defines `class ModelNew(nn.Module)`.",
    State.runtime_error: "Importing the module failed at run time; fix the error and call `compile` again.",
    State.timeout: "Importing or building took too long; look for work at import time or pass a larger timeout_s.",
    State.rejected: "The worker broke the harness protocol; do not write to file descriptors you did not open.",
}


async def _compile_only(rt: Runtime, name: str, candidate: str, timeout: float) -> CompileResult:
    """A toolchain without its device (CUDA on a CPU-only host): build to device code, run nothing."""
    backend = get_backend(name)
    run = new_run("compile")
    run.write("candidate.py", candidate)
    start = time.perf_counter()
    with recording_cancellation(run, "compile"):
        await rt.progress(0.2, f"compiling {name} sources (compile-only: no device on this host)")
        outcome = await anyio.to_thread.run_sync(lambda: backend.compile_only(candidate, timeout_s=timeout))
    state = State.compiled if outcome.ok else State.compilation_failure
    next_step = NEXT[state] if not outcome.ok else f"Built (compile-only). verify and profile need a host with a device for {name}."
    result = CompileResult(
        state=state, backend=name, diagnostics=outcome.diagnostics, kernels=outcome.kernels,
        duration_s=round(time.perf_counter() - start, 4), run_id=run.id, next_step=next_step,
    )
    run.write("result.json", result)
    await rt.progress(1.0, state.value)
    return result


async def _build(rt: Runtime, run: Run, chosen: Backend, candidate: str, reference: str | None, timeout: float) -> Report:
    """Import the candidate in a worker (and launch it once on the reference's inputs when given)."""
    async with rt.slot(chosen, exclusive=False) as device:
        # The candidate's worker never sees the problem: with a reference, a reference worker makes
        # the inputs of the one launch that builds kernels compiled on first use.
        cand_worker = await rt.pool.acquire(device)
        ref_worker = await rt.pool.acquire(device) if reference is not None else None
        try:
            await rt.progress(0.2, "compiling")
            session = Session(backend=chosen.name, device=device, precision="strict", problem=reference, candidate=candidate,
                              reference_worker=ref_worker, candidate_worker=cand_worker)
            report = await session.run(Plan(trials=[], first_launch=reference is not None), timeout)
        finally:
            await rt.pool.release(cand_worker, run.path / "worker")
            if ref_worker is not None:
                await rt.pool.release(ref_worker, run.path / "reference-worker")
    return report


async def compile_candidate(rt: Runtime, request: CompileRequest) -> CompileResult:
    timeout = timeout_or_default(request.timeout_s, DEFAULT_TIMEOUT_S)
    name, candidate, reference = request.backend, request.candidate, request.reference
    if probe(name).compile_only and not probe(name).available:
        return await _compile_only(rt, name, candidate, max(timeout, COMPILE_ONLY_MIN_TIMEOUT_S))
    chosen = resolve_backend(name)
    run = new_run("compile")
    run.write("candidate.py", candidate)
    start = time.perf_counter()
    diagnostics = [f"candidate.py: warning: {f.message}" for f in check(candidate, chosen, Guardrails())]
    with recording_cancellation(run, "compile"):
        report = await _build(rt, run, chosen, candidate, reference, timeout)
    if report.ending is Ending.done:
        state = State.compiled
    elif report.side is Side.reference:
        state = State.runtime_error
    elif report.ending is Ending.failed and report.state is not None:
        state = report.state
    else:
        state = {Ending.timeout: State.timeout, Ending.protocol: State.rejected}.get(report.ending, State.runtime_error)
    for outcome in report.builds:
        diagnostics += [str(d) for d in outcome.diagnostics if str(d) not in report.diagnostics]
    result = CompileResult(
        state=state, backend=chosen.name, diagnostics=report.diagnostics + diagnostics, kernels=report.kernels,
        error=report.error if state is not State.compiled else None, interpreted=probe(chosen.name).interpreted,
        duration_s=round(time.perf_counter() - start, 4), run_id=run.id, next_step=NEXT[state],
    )
    run.write("result.json", result)
    await rt.progress(1.0, state.value)
    return result
