"""KForge's loop over rounds: functional passes until a candidate is correct, then optimization passes.

Round ``n`` asks every sample the same prompt. Before anything is correct, the prompt is the first
one (generate/translate) or a fix of the most promising failure of the last round. Once something
is correct, the analysis agent turns the best candidate's profile digest into ONE recommendation
and the prompt asks for that change. The best candidate so far is kept. The loop stops at the
round budget, when the best reaches the target fraction of speed of light, or after ``patience``
optimization rounds without a faster candidate.
"""

from __future__ import annotations

import time

import anyio

from kfoundry.clients.artifacts import folder_name
from kfoundry.clients.attempt import Bench, Plan, run_attempt
from kfoundry.clients.records import PROGRESS, Attempt, Phase, RunSummary
from kfoundry.clients.session import ToolCallError
from kfoundry.schema import AnalysisResult, CompileResult, ProfileResult, VerifyResult

_RESULTS = {"compile": CompileResult, "verify": VerifyResult, "profile": ProfileResult}


class Progress:
    """Best-so-far and how long since it last improved; fed one round at a time."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self.last_round: list[Attempt] = []
        self.best: Attempt | None = None
        self.stale_rounds = 0

    def absorb(self, round_attempts: list[Attempt], phase: Phase) -> None:
        self.attempts += round_attempts
        self.last_round = round_attempts
        improved = False
        for attempt in round_attempts:
            rank = attempt.rank
            if rank is not None and (self.best is None or rank > (self.best.rank or 0.0)):
                self.best, improved = attempt, True
        if phase == "optimization":
            self.stale_rounds = 0 if improved else self.stale_rounds + 1

    def history(self) -> list[str]:
        """One line per earlier optimization attempt: what it tried and what came of it."""
        lines = []
        for a in self.attempts:
            if a.phase != "optimization":
                continue
            outcome = a.state.value
            if a.rank is not None:
                outcome = f"correct, {a.detail}" + (" (the current best)" if a is self.best else " (not faster than the best)")
            tried = " ".join((a.recommendation or "").split())[:240]
            lines.append(f"{a.label}: {tried} -> {outcome}")
        return lines


def stop_reason(bench: Bench, progress: Progress) -> str | None:
    s, best = bench.settings, progress.best
    if s.target_sol is not None and best is not None and best.sol_fraction is not None and best.sol_fraction >= s.target_sol:
        return f"target reached: {best.label} runs at {best.sol_fraction:.1%} of speed of light (target {s.target_sol:.1%})"
    if s.patience is not None and progress.stale_rounds >= s.patience:
        return f"no faster candidate in {progress.stale_rounds} optimization rounds (patience {s.patience})"
    return None


async def plan_round(bench: Bench, iteration: int, progress: Progress) -> Plan:
    store, best = bench.store, progress.best
    if best is not None:
        candidate = store.read_text(best.folder, "candidate.py") or ""
        analysis = store.read_model(best.folder, "analysis.json", AnalysisResult)
        if analysis is None:
            raise ToolCallError(f"{best.folder} is correct but has no analysis.json; rerun without --resume")
        history = progress.history()
        bench.emit("stage", iteration=iteration, stage="analysis agent")
        advice = await bench.analyst.recommend(analysis, candidate, bench.settings.backend, bench.device, history, tag=folder_name(iteration, None))
        prompt = bench.book.optimize(candidate, analysis, advice.text, history)
        return Plan(iteration, "optimization", prompt, based_on=best.folder, recommendation=advice)
    if not progress.last_round:
        return Plan(iteration, "functional", bench.book.first())
    failed = max(progress.last_round, key=lambda a: (PROGRESS[a.state], -(a.sample or 0)))
    result = None
    if failed.feedback is not None:
        result = store.read_model(failed.folder, f"{failed.feedback}.json", _RESULTS[failed.feedback])
    prompt = bench.book.fix(
        store.read_text(failed.folder, "candidate.py"), store.read_text(failed.folder, "response.md") or "", result,
        failed.state.value, attempt=iteration - 1,
    )
    return Plan(iteration, "functional", prompt, based_on=failed.folder)


async def run_round(bench: Bench, plan: Plan, samples: list[int | None], limiter: anyio.CapacityLimiter) -> list[Attempt]:
    done: dict[int | None, Attempt] = {}
    errors: list[ToolCallError] = []

    async def one(sample: int | None) -> None:
        async with limiter:
            try:
                done[sample] = await run_attempt(bench, plan, sample)
            except ToolCallError as exc:
                errors.append(exc)

    async with anyio.create_task_group() as group:
        for sample in samples:
            group.start_soon(one, sample)
    if errors:
        raise errors[0]
    return [done[sample] for sample in samples]


async def optimize(bench: Bench) -> RunSummary:
    """Run one problem with one model to the end; the summary is also written to run.json."""
    s, store, start = bench.settings, bench.store, time.perf_counter()
    summary = RunSummary(
        problem=bench.problem, model=bench.model, analysis_model=bench.analyst.spec, backend=s.backend, mode=s.mode,
        folder=str(store.path),
    )
    on_disk = {a.folder: a for a in store.start(s.resume)}
    samples: list[int | None] = [None] if s.samples == 1 else list(range(1, s.samples + 1))
    limiter = anyio.CapacityLimiter(s.concurrency)
    progress = Progress()
    bench.emit("run_started", detail=f"{s.mode}, {s.rounds} rounds x {s.samples} samples" + (f", {len(on_disk)} attempts on disk" if on_disk else ""))
    reason = None
    try:
        for iteration in range(1, s.rounds + 1):
            kept = [on_disk[f] for f in (folder_name(iteration, k) for k in samples) if f in on_disk]
            phase: Phase = "optimization" if progress.best is not None else "functional"
            missing = [k for k in samples if folder_name(iteration, k) not in on_disk]
            if missing:
                plan = await plan_round(bench, iteration, progress)
                bench.emit("round_started", iteration=iteration, stage=plan.prompt.kind)
                kept += await run_round(bench, plan, missing, limiter)
            progress.absorb(sorted(kept, key=lambda a: a.sample or 0), phase)
            best = progress.best
            summary.attempts, summary.best = progress.attempts, best.folder if best else None
            store.write(".", "run.json", summary)
            reason = stop_reason(bench, progress)
            if reason:
                break
    except ToolCallError as exc:
        summary.error = str(exc)
        reason = f"stopped by a tool error: {exc}"
    if reason is None:
        reason = "single-shot: one round" if s.mode == "single" else f"iteration budget spent ({s.rounds} rounds)"
    summary.stop_reason = reason
    summary.duration_s = round(time.perf_counter() - start, 2)
    store.write(".", "run.json", summary)
    best = summary.best_attempt()
    bench.emit(
        "run_finished", detail=reason, state=best.state if best else None,
        speedup=best.rank if best else None, sol_fraction=best.sol_fraction if best else None,
    )
    return summary
