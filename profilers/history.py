"""Earlier attempts on the same problem, read from the caller's runs, and which recommended changes did not pay.

A ``profile`` run keeps ``reference.py``, ``candidate.py`` and ``result.json``; an ``analyze_profile``
run keeps ``result.json`` (naming the profile run it read) and ``advice.json`` (the chosen action).
Profile runs of the same reference, backend and policy are one problem's attempts, oldest first.
The attempt after a recommendation is taken as the try of it: when its median is not at least
``GAIN`` faster (or its candidate did not change), that action is *tried in vain* and is not
recommended again for this problem.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ValidationError

from kfoundry.artifacts import list_runs, open_run
from kfoundry.errors import BadRequest
from kfoundry.profilers.advice import Action, Advice
from kfoundry.profilers.digest import ms
from kfoundry.schema import AnalysisResult, ProfileResult, State

#: An attempt must be this much faster than the one before to count as a gain.
GAIN = 0.03
#: Runs looked at, newest first: a session's attempts on one problem are among the caller's recent runs.
LOOKBACK = 400
ADVICE_FILE = "advice.json"


class Attempt(BaseModel):
    profile_run_id: str
    median_ms: float
    candidate: str
    action: Action | None = None


def attempts(profile_run_id: str) -> list[Attempt]:
    """This problem's profiled attempts up to and including ``profile_run_id``, oldest first (the caller's runs only)."""
    try:
        current = open_run(profile_run_id).path
    except BadRequest:
        return []
    key = _problem_key(current)
    if key is None:
        return []
    advised: dict[str, Action] = {}
    found: list[tuple[tuple[str, float], Attempt]] = []
    for run_id in list_runs(limit=LOOKBACK):
        path = current.parent / run_id
        if run_id.startswith("analyze-"):
            action = _advised(path)
            if action is not None and action[0] not in advised:
                advised[action[0]] = action[1]  # newest analysis of a profile run wins: list_runs is newest first
        elif run_id.startswith("profile-") and (run_id == profile_run_id or _problem_key(path) == key):
            attempt = _attempt(run_id, path)
            if attempt is not None:
                found.append(((_stamp(run_id), _mtime(path)), attempt))
    found.sort(key=lambda item: item[0])
    ordered = [a for _, a in found]
    cut = next((i for i, a in enumerate(ordered) if a.profile_run_id == profile_run_id), len(ordered) - 1)
    ordered = ordered[: cut + 1]
    return [a.model_copy(update={"action": advised.get(a.profile_run_id)}) for a in ordered]


def tried_in_vain(history: list[Attempt]) -> set[Action]:
    """Actions recommended after one attempt whose next attempt did not run meaningfully faster."""
    vain: set[Action] = set()
    for before, after in zip(history, history[1:], strict=False):
        if before.action is None or before.action is Action.stop:
            continue
        if after.candidate == before.candidate or after.median_ms > before.median_ms * (1 - GAIN):
            vain.add(before.action)
    return vain


def describe(history: list[Attempt]) -> list[str]:
    """One line per recommendation and what the attempt after it measured."""
    lines = []
    for before, after in zip(history, history[1:], strict=False):
        if before.action is None:
            continue
        change = after.median_ms / before.median_ms - 1
        verdict = "no gain" if after.median_ms > before.median_ms * (1 - GAIN) else "helped"
        lines.append(f"{before.action.value} advised at {ms(before.median_ms)} -> next attempt {ms(after.median_ms)} ({change:+.0%}, {verdict})")
    return lines


def _problem_key(path: Path) -> tuple[str, str, str] | None:
    try:
        reference = (path / "reference.py").read_text()
        result = json.loads((path / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return reference, str(result.get("backend")), str(result.get("precision", "strict"))


def _attempt(run_id: str, path: Path) -> Attempt | None:
    try:
        result = ProfileResult.model_validate_json((path / "result.json").read_text())
        candidate = (path / "candidate.py").read_text()
    except (OSError, ValidationError):
        return None
    if result.state is not State.correct or result.candidate is None:
        return None
    return Attempt(profile_run_id=run_id, median_ms=result.candidate.median_ms, candidate=candidate)


def _advised(path: Path) -> tuple[str, Action] | None:
    try:
        analysis = AnalysisResult.model_validate_json((path / "result.json").read_text())
        advice = Advice.model_validate_json((path / ADVICE_FILE).read_text())
    except (OSError, ValidationError):
        return None
    if analysis.profile_run_id is None:
        return None
    return analysis.profile_run_id, advice.action


def _mtime(path: Path) -> float:
    try:
        return (path / "result.json").stat().st_mtime
    except OSError:
        return 0.0


def _stamp(run_id: str) -> str:
    """The creation stamp inside a run id (``profile-20261121T101500-a1b2c3``), which sorts in time order."""
    return run_id.split("-")[1] if run_id.count("-") >= 2 else run_id
