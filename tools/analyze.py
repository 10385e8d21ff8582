"""``analyze_profile``: bottleneck, digest and ONE recommendation from a profile run or raw profiler text."""

from __future__ import annotations

import base64
import binascii

from kfoundry.artifacts import RUN_ID, new_run, open_run
from kfoundry.errors import BadRequest
from kfoundry.profilers.analysis import diagnose, diagnose_text
from kfoundry.schema import AnalysisResult, ProfileResult
from kfoundry.tools.runtime import check_source

MAX_IMAGES = 8


async def analyze_profile(profile: str, candidate: str | None = None, images: list[str] | None = None) -> AnalysisResult:
    if not isinstance(profile, str) or not profile.strip():
        raise BadRequest("profile is empty; send the run_id a `profile` call returned, or raw profiler text")
    check_source(profile, "profile", kind="a run_id or profiler text")
    if candidate is not None:
        check_source(candidate, "candidate", kind="the candidate module source")
    run = new_run("analyze")
    profile_run_id = None
    text = profile.strip()
    if RUN_ID.match(text):
        source_run = open_run(text)
        result_path = source_run.path / "result.json"
        if not text.startswith("profile-") or not result_path.is_file():
            raise BadRequest(f"{text} is not a finished profile run; pass the run_id returned by `profile`")
        measured = ProfileResult.model_validate_json(result_path.read_text())
        if candidate is None and (source_run.path / "candidate.py").is_file():
            candidate = (source_run.path / "candidate.py").read_text()
        diagnosis = diagnose(measured, candidate)
        profile_run_id = text
    else:
        run.write("profile.txt", text)
        diagnosis = diagnose_text(text)
    for i, image in enumerate((images or [])[:MAX_IMAGES]):
        try:
            run.write(f"image-{i}.png", base64.b64decode(image, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"images[{i}] is not base64 data: {exc}") from exc
    result = AnalysisResult(
        bottleneck=diagnosis.bottleneck, digest=diagnosis.digest, recommendation=diagnosis.recommendation,
        evidence=diagnosis.evidence, source="rules", profile_run_id=profile_run_id, run_id=run.id,
    )
    run.write("result.json", result)
    return result
