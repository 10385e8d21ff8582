"""One attempt: prompt -> reply -> candidate -> compile -> verify -> profile -> analyze_profile -> hooks.

Every step's input and output is written into the attempt's folder as it happens; attempt.json,
written last, marks it finished. A candidate's failure ends the attempt with that state; a tool
that cannot be called at all raises ``ToolCallError`` (the run cannot go on).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfoundry.clients.agents import AnalysisAgent, GenerationAgent, Recommendation
from kfoundry.clients.artifacts import RunStore, folder_name
from kfoundry.clients.extract import extract_candidate
from kfoundry.clients.hooks import run_hook
from kfoundry.clients.prompting import Prompt, PromptBook
from kfoundry.clients.providers import ModelError
from kfoundry.clients.records import Attempt, Event, Phase, RunSettings
from kfoundry.clients.session import ToolSession
from kfoundry.schema import State

RESULT_FILES = ("compile.json", "verify.json", "profile.json", "analysis.json")
ARTIFACT_FILES = ("prompt.md", "response.md", "candidate.py", *RESULT_FILES, "recommendation.md")


@dataclass
class Plan:
    """What every sample of one round is asked."""

    iteration: int
    phase: Phase
    prompt: Prompt
    based_on: str | None = None
    recommendation: Recommendation | None = None


@dataclass
class Bench:
    """Everything one problem x model run works with."""

    session: ToolSession
    generator: GenerationAgent
    analyst: AnalysisAgent
    settings: RunSettings
    store: RunStore
    book: PromptBook
    problem: str
    reference: str
    reference_path: Path
    model: str
    device: str | None = None
    observer: Callable[[Event], None] = field(default=lambda event: None)

    def emit(self, kind: Any, **fields: Any) -> None:
        self.observer(Event(kind=kind, problem=self.problem, model=self.model, **fields))


def _first_line(text: str, limit: int = 200) -> str:
    line = next((s for s in text.strip().splitlines() if s.strip()), "")
    return line[:limit]


def _failure_detail(result: Any) -> str:
    verify = getattr(result, "verify", None)
    mismatch = getattr(result, "mismatch", None) or getattr(verify, "mismatch", None)
    if mismatch is not None:
        return _first_line(mismatch.message)
    diagnostics = getattr(result, "diagnostics", None)
    if diagnostics:
        return _first_line(diagnostics[0])
    error = getattr(result, "error", None)
    if error is not None:
        return _first_line(f"{error.type}: {error.message}")
    findings = [*getattr(result, "findings", []), *getattr(verify, "findings", [])]
    blocking = [f for f in findings if f.blocking]
    return _first_line(f"{blocking[0].code}: {blocking[0].message}") if blocking else ""


async def _check(bench: Bench, attempt: Attempt, code: str) -> None:
    """compile -> verify -> profile -> analyze, stopping at the first state that is not a success."""
    s, session, store, folder = bench.settings, bench.session, bench.store, attempt.folder
    # Only what the user set: the server merges it over its defaults and its KFOUNDRY_GUARDRAILS file.
    tolerances = {"atol": s.atol, "rtol": s.rtol, "guardrails": s.guardrails or None, "precision": s.precision}

    bench.emit("stage", iteration=attempt.iteration, sample=attempt.sample, stage="compile")
    compiled = await session.compile(s.backend, code)
    store.write(folder, "compile.json", compiled)
    attempt.run_ids["compile"] = compiled.run_id
    if compiled.state is not State.compiled:
        attempt.state, attempt.feedback, attempt.detail = compiled.state, "compile", _failure_detail(compiled)
        return

    bench.emit("stage", iteration=attempt.iteration, sample=attempt.sample, stage="verify")
    verified = await session.verify(s.backend, bench.reference, code, trials=s.trials, **tolerances)
    store.write(folder, "verify.json", verified)
    attempt.run_ids["verify"] = verified.run_id
    if verified.state is not State.correct:
        attempt.state, attempt.feedback, attempt.detail = verified.state, "verify", _failure_detail(verified)
        return

    bench.emit("stage", iteration=attempt.iteration, sample=attempt.sample, stage="profile")
    profiled = await session.profile(
        s.backend, bench.reference, code, baselines=s.baselines, reps=s.reps, warmup=s.warmup, trials=s.profile_trials, **tolerances
    )
    store.write(folder, "profile.json", profiled)
    attempt.run_ids["profile"] = profiled.run_id
    attempt.state = profiled.state
    if profiled.state is not State.correct or profiled.candidate is None:
        attempt.feedback, attempt.detail = "profile", _failure_detail(profiled)
        return
    attempt.candidate_ms = profiled.candidate.median_ms
    attempt.eager_ms = profiled.eager.median_ms if profiled.eager else None
    attempt.compile_ms = profiled.compiled.median_ms if profiled.compiled else None
    attempt.speedup_vs_eager, attempt.speedup_vs_compile = profiled.speedup_vs_eager, profiled.speedup_vs_compile
    attempt.sol_fraction = profiled.sol_fraction
    parts = [f"{profiled.candidate.median_ms:.4g} ms"]
    if profiled.speedup_vs_eager is not None:
        parts.append(f"{profiled.speedup_vs_eager:.2f}x eager")
    if profiled.speedup_vs_compile is not None:
        parts.append(f"{profiled.speedup_vs_compile:.2f}x compile")
    if profiled.sol_fraction is not None:
        parts.append(f"{profiled.sol_fraction:.1%} of SOL")
    attempt.detail = ", ".join(parts)

    bench.emit("stage", iteration=attempt.iteration, sample=attempt.sample, stage="analyze")
    analysis = await session.analyze(profiled.run_id, code)
    store.write(folder, "analysis.json", analysis)
    attempt.run_ids["analysis"] = analysis.run_id
    attempt.bottleneck = analysis.bottleneck.value


def hook_payload(bench: Bench, attempt: Attempt) -> dict[str, Any]:
    folder = bench.store.path / attempt.folder
    results = {}
    for name in RESULT_FILES:
        text = bench.store.read_text(attempt.folder, name)
        if text is not None:
            results[name.removesuffix(".json")] = json.loads(text)
    return {
        "problem": bench.problem, "model": bench.model, "backend": bench.settings.backend,
        "iteration": attempt.iteration, "sample": attempt.sample, "state": attempt.state.value,
        "attempt": attempt.model_dump(mode="json"), "results": results,
        "artifacts": {name: str(folder / name) for name in ARTIFACT_FILES if (folder / name).is_file()},
        "folder": str(folder), "reference": str(bench.reference_path),
    }


async def run_attempt(bench: Bench, plan: Plan, sample: int | None) -> Attempt:
    start = time.perf_counter()
    store, folder = bench.store, folder_name(plan.iteration, sample)
    prompt = bench.settings.edits.apply(plan.iteration, plan.prompt.text, plan.prompt.context)
    store.write(folder, "prompt.md", prompt)
    recommendation = plan.recommendation
    if recommendation is not None:
        store.write(folder, "recommendation.md", recommendation.text.rstrip() + f"\n\n<!-- source: {recommendation.source} -->\n")
        if recommendation.prompt is not None:
            store.write(folder, "analysis_prompt.md", recommendation.prompt)
        if recommendation.reply is not None or recommendation.error is not None:
            store.write(folder, "analysis_response.md", recommendation.reply.text if recommendation.reply else f"(no reply: {recommendation.error})")
    attempt = Attempt(
        iteration=plan.iteration, sample=sample, folder=folder, phase=plan.phase, prompt_kind=plan.prompt.kind,
        state=State.generation_failure, based_on=plan.based_on, recommendation=recommendation.text if recommendation else None,
    )
    bench.emit("stage", iteration=plan.iteration, sample=sample, stage="generate")
    try:
        reply = await bench.generator.write(prompt, tag=folder)
    except ModelError as exc:
        store.write(folder, "response.md", f"(no reply: {exc})\n")
        attempt.detail = _first_line(f"no reply: {exc}")
    else:
        store.write(folder, "response.md", reply.text)
        attempt.output_tokens = reply.output_tokens
        code = extract_candidate(reply.text)
        if code is None:
            attempt.detail = "the reply holds no ```python block defining class ModelNew"
        else:
            store.write(folder, "candidate.py", code)
            await _check(bench, attempt, code)
    for hook in bench.settings.hooks:
        bench.emit("stage", iteration=plan.iteration, sample=sample, stage="hook")
        scores = await run_hook(hook, hook_payload(bench, attempt), bench.settings.hook_timeout_s, cwd=store.path / folder)
        attempt.scores.update(scores)
    if bench.settings.hooks:
        store.write(folder, "hook.json", attempt.scores)
    attempt.duration_s = round(time.perf_counter() - start, 3)
    store.finish(attempt)
    bench.emit(
        "attempt_finished", iteration=plan.iteration, sample=sample, state=attempt.state, detail=attempt.detail,
        speedup=attempt.rank, sol_fraction=attempt.sol_fraction,
    )
    return attempt
