"""``analyze_profile``: digest, bottleneck and ONE recommendation from a profile run or raw profiler text."""

from __future__ import annotations

import base64

from kfoundry.artifacts import RUN_ID, new_run, open_run
from kfoundry.errors import BadRequest
from kfoundry.profilers.analysis import diagnose, diagnose_text
from kfoundry.profilers.history import ADVICE_FILE, attempts
from kfoundry.schema import AnalysisResult, ProfileResult
from kfoundry.tools.requests import AnalyzeRequest


async def analyze_profile(request: AnalyzeRequest) -> AnalysisResult:
    """Diagnose a finished profile run (by run_id) or raw profiler text.

    A run_id opens only the caller's own runs (``artifacts.acting_for``); another caller's run
    fails exactly as an unknown id does. The caller's earlier profile runs of the same problem
    are its history: a change recommended before whose next attempt did not run faster is not
    recommended again.

    Raises:
        BadRequest: ``request.profile`` looks like a run id but names no finished profile run of the caller's.
    """
    candidate = request.candidate
    run = new_run("analyze")
    profile_run_id = None
    text = request.profile.strip()
    if RUN_ID.match(text):
        source_run = open_run(text)
        result_path = source_run.path / "result.json"
        if not text.startswith("profile-") or not result_path.is_file():
            raise BadRequest(f"{text} is not a finished profile run; pass the run_id returned by `profile`")
        measured = ProfileResult.model_validate_json(result_path.read_text())
        if candidate is None and (source_run.path / "candidate.py").is_file():
            candidate = (source_run.path / "candidate.py").read_text()
        diagnosis = diagnose(measured, candidate, history=attempts(text))
        profile_run_id = text
    else:
        run.write("profile.txt", text)
        diagnosis = diagnose_text(text)
    for i, image in enumerate(request.images or []):
        run.write(f"image-{i}.png", base64.b64decode(image, validate=True))
    if diagnosis.advice is not None:
        run.write(ADVICE_FILE, diagnosis.advice)
    if diagnosis.facts is not None:
        run.write("digest.json", diagnosis.facts)
    advice, facts = diagnosis.advice, diagnosis.facts
    result = AnalysisResult(
        bottleneck=diagnosis.bottleneck, digest=diagnosis.digest, recommendation=diagnosis.recommendation,
        evidence=diagnosis.evidence, source="rules", profile_run_id=profile_run_id, run_id=run.id,
        action=advice.action if advice else None, expected_gain_ms=advice.expected_gain_ms if advice else None,
        expected_ms=advice.expected_ms if advice else None, gap_kernel=facts.gap_kernel if facts else None,
        considered=advice.considered if advice else [], skipped=advice.skipped if advice else [],
        history=facts.history if facts else [],
    )
    run.write("result.json", result)
    return result
