"""A whole ``kfoundry optimize`` invocation: connect once, run every problem with every model, write reports.

    out/manifest.json  report.md  speedup.png                        across problems
    out/<problem>/reference.py  translate.json                      per problem
    out/<problem>/<model>/manifest.json  run.json  report.md  speedup.png  iter_<n>[_s<k>]/...
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from kfoundry import examples
from kfoundry.clients.agents import AnalysisAgent, GenerationAgent
from kfoundry.clients.artifacts import RunStore, versions, write
from kfoundry.clients.attempt import Bench
from kfoundry.clients.loop import optimize
from kfoundry.clients.plot import plot_run, plot_runs
from kfoundry.clients.prompting import PromptBook
from kfoundry.clients.providers import RULES, Model, ModelOptions, ModelRequest, Role, load_model, slug
from kfoundry.clients.records import Event, RunSettings, RunSummary
from kfoundry.clients.report import run_report, summary_report
from kfoundry.clients.session import ToolCallError, ToolSession, connect
from kfoundry.schema import ToolchainInfo, TranslateResult

logger = logging.getLogger(__name__)

ModelFactory = Callable[[str, Role], Model]


class Problem(BaseModel):
    name: str
    reference: str
    source: str = Field(description="The file it was read from, or 'bundled:<name>'.")


def resolve_problem(spec: str) -> Problem:
    """A problem file, or the name of a bundled problem.

    Raises:
        ValueError: neither; the message lists the bundled problems.
    """
    path = Path(spec)
    if path.is_file():
        name = path.parent.name if path.stem == "reference" else path.stem
        return Problem(name=name, reference=path.read_text(encoding="utf-8"), source=str(path.resolve()))
    try:
        return Problem(name=spec, reference=examples.source(spec), source=f"bundled:{spec}")
    except KeyError as exc:
        known = ", ".join(p.name for p in examples.problems())
        raise ValueError(f"{spec!r} is neither a problem file nor a bundled problem ({known})") from exc


class Job(BaseModel):
    problems: list[str]
    models: list[str]
    analysis_model: str | None = Field(default=None, description="Default: the generation model ('rules': no model).")
    options: ModelOptions = Field(default_factory=ModelOptions)
    settings: RunSettings
    out: Path
    server: str | None = None
    token: str | None = None
    fast_p: float = 1.0
    command: list[str] = Field(default_factory=lambda: list(sys.argv))


def _analysis_spec(job: Job, model: str) -> str:
    return job.analysis_model or model


def _device(info: ToolchainInfo) -> str:
    return info.device + (" (Triton interpreter on the CPU)" if info.interpreted else "")


async def _backend(session: ToolSession, backend: str) -> tuple[ToolchainInfo, list[str]]:
    listed = await session.backends()
    found = next((b for b in listed.backends if b.name == backend), None)
    if found is None or not found.available:
        offered = ", ".join(b.name for b in listed.backends if b.available)
        why = found.reason if found is not None else "unknown backend"
        raise ToolCallError(f"backend {backend!r} is not available on the server ({why}); it offers: {offered}")
    return found, listed.devices


async def _check_precision(session: ToolSession, precision: str) -> None:
    offered = await session.precisions()
    if offered and precision not in offered:
        raise ToolCallError(f"precision {precision!r} is not a policy the server offers; it offers: {', '.join(offered)}")


async def _translate(session: ToolSession, job: Job, problem: Problem, folder: Path) -> TranslateResult:
    cached = folder / "translate.json"
    if job.settings.resume and cached.is_file():
        return TranslateResult.model_validate_json(cached.read_text(encoding="utf-8"))
    source = job.settings.translate_from
    if source is None:
        result = await session.translate(problem.reference, job.settings.backend)
    else:
        result = await session.translate(problem.reference, job.settings.backend, source.backend, source.source)
    write(cached, result)
    return result


def _manifest(job: Job, session: ToolSession, toolchain: ToolchainInfo, devices: list[str], problem: Problem, run: RunSummary,
              store: RunStore, reference_path: Path, translate_run: str) -> dict[str, Any]:
    return {
        "command": job.command,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "server": session.info.model_dump(),
        "backend": toolchain.model_dump(mode="json"),
        "devices": devices,
        "problem": problem.model_dump(exclude={"reference"}) | {"reference": str(reference_path)},
        "model": run.model,
        "analysis_model": run.analysis_model,
        "model_options": job.options.model_dump(mode="json"),
        "settings": job.settings.model_dump(mode="json", exclude={"edits", "translate_from"}),
        "prompt_edits": [f"{e.kind} {e.path} (iterations {e.iterations.describe()})" for e in job.settings.edits.edits],
        "aux_code": [f"{a.path} (iterations {a.iterations.describe()}, {len(a.files)} files)" for a in job.settings.edits.aux],
        "translate_from": job.settings.translate_from.path if job.settings.translate_from else None,
        "seed": job.settings.seed,
        "translate_run_id": translate_run,
        "note": "Inputs are drawn by the server under secret per-job seeds; each attempt's run_ids name its server-side records.",
        "attempts": [
            {"folder": a.folder, "state": a.state.value, "run_ids": a.run_ids,
             "replay": store.replay_commands(a, job.settings.backend, reference_path)}
            for a in run.attempts
        ],
    }


async def run_job(job: Job, observer: Callable[[Event], None] | None = None, server: Any = None,
                  model_factory: ModelFactory | None = None) -> list[RunSummary]:
    """Run every problem with every model.

    ``server`` overrides ``job.server``: an in-process ``MCPServer``, or an open ``ToolSession`` to reuse.
    """
    make = model_factory or (lambda spec, role: load_model(spec, role, job.options))
    problems = [resolve_problem(p) for p in job.problems]
    watch = observer or (lambda event: None)
    sampler: dict[str, Model] = {}

    async def sample(prompt: str, system: str | None, max_tokens: int) -> str:
        # The server asked for our model (MCP sampling): the analysis model answers.
        spec = _analysis_spec(job, job.models[0])
        model = sampler.setdefault(spec, make(spec if spec != RULES else job.models[0], "analysis"))
        reply = await model.complete(ModelRequest(role="analysis", system=system or "", prompt=prompt, tag="sampling"))
        return reply.text

    runs: list[RunSummary] = []
    job.out.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        if isinstance(server, ToolSession):
            session = server
        else:
            session = await stack.enter_async_context(connect(server if server is not None else job.server, job.token, sample, job.settings.tool_timeout_s))
        toolchain, devices = await _backend(session, job.settings.backend)
        await _check_precision(session, job.settings.precision)
        for problem in problems:
            folder = job.out / problem.name
            reference_path = write(folder / "reference.py", problem.reference).resolve()
            translated = await _translate(session, job, problem, folder)
            s = job.settings
            book = PromptBook(toolchain, translated, problem.reference, _device(toolchain), s.guardrails, s.atol, s.rtol, s.translate_from, s.precision)
            for spec in job.models:
                analysis_spec = _analysis_spec(job, spec)
                generator = make(spec, "generation")
                analyst = None if analysis_spec == RULES else make(analysis_spec, "analysis")
                store = RunStore(job.out, problem.name, slug(spec))
                bench = Bench(
                    session=session, generator=GenerationAgent(generator), analyst=AnalysisAgent(analyst), settings=s, store=store,
                    book=book, problem=problem.name, reference=problem.reference, reference_path=reference_path, model=spec,
                    device=_device(toolchain), observer=watch,
                )
                try:
                    run = await optimize(bench)
                finally:
                    await generator.aclose()
                    if analyst is not None:
                        await analyst.aclose()
                plot_run(run, store.path / "speedup.png")
                write(store.path / "report.md", run_report(run))
                write(store.path / "manifest.json", _manifest(job, session, toolchain, devices, problem, run, store, reference_path, translated.run_id))
                runs.append(run)
        for model in sampler.values():
            await model.aclose()
        plot_runs(runs, job.out / "speedup.png")
        write(job.out / "report.md", summary_report(runs, job.out, job.fast_p))
        write(job.out / "manifest.json", {
            "command": job.command, "versions": versions(), "server": session.info.model_dump(), "backend": toolchain.model_dump(mode="json"),
            "devices": devices, "runs": [{"problem": r.problem, "model": r.model, "folder": r.folder, "best": r.best, "stop_reason": r.stop_reason} for r in runs],
        })
    return runs
