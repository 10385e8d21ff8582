"""``compile``: import the candidate in a worker so its kernels build, and report toolchain facts."""

from __future__ import annotations

import time

from kfoundry.artifacts import new_run
from kfoundry.schema import CompileResult, State
from kfoundry.server.jobs import Conversation, Ending
from kfoundry.tools.runtime import Runtime, check_source, check_timeout, device_for, probe, resolve_backend
from kfoundry.verify.guardrails import Guardrails, check

DEFAULT_TIMEOUT_S = 120.0

NEXT = {
    State.compiled: "Built. Call `verify` with the reference to check it against PyTorch.",
    State.compilation_failure: "Fix the errors in diagnostics and call `compile` again.",
    State.generation_failure: "Send a full Python module that defines `class ModelNew(nn.Module)`.",
    State.runtime_error: "Importing the module failed at run time; fix the error and call `compile` again.",
    State.timeout: "Importing or building took too long; look for work at import time or pass a larger timeout_s.",
    State.rejected: "The worker broke the harness protocol; do not write to file descriptors you did not open.",
}


async def compile_candidate(rt: Runtime, backend: str, candidate: str, timeout_s: float | None = None) -> CompileResult:
    chosen = resolve_backend(backend)
    check_source(candidate, "candidate", kind="a module defining class ModelNew")
    timeout = check_timeout(timeout_s, DEFAULT_TIMEOUT_S)
    run = new_run("compile")
    run.write("candidate.py", candidate)
    start = time.perf_counter()
    device = device_for(chosen)
    diagnostics = [f"candidate.py: warning: {f.message}" for f in check(candidate, chosen, Guardrails())]
    async with rt.slot(device, exclusive=False):
        worker = await rt.pool.acquire(device)
        try:
            await rt.progress(0.2, "compiling")
            conv = Conversation(worker, {"role": "compile", "backend": chosen.name, "candidate": candidate, "device": device})
            report = await conv.run(timeout)
        finally:
            await rt.pool.release(worker, run.path / "worker")
    if report.ending is Ending.done:
        state = State.compiled
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
