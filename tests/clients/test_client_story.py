"""The real anthropic SDK against a local fake Messages API playing a whole story on `elementwise` with cpp.

Story: a C++ syntax error -> a numerically wrong fix -> a correct kernel -> two optimization rounds,
each with one recommendation from the analysis model. The first request is answered "overloaded"
once, so the provider's retry path runs too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from client_support import CORRECT, SYNTAX_ERROR, WRONG_VALUES, quick, serving
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kfoundry.clients.providers.scripted import render_item
from kfoundry.clients.runner import Job, run_job
from kfoundry.schema import AnalysisResult, CompileResult, VerifyResult

pytestmark = pytest.mark.anyio

BLOCKED = {"example": "elementwise/cpp", "say": "Blocked schedule.", "edits": [["#pragma omp parallel for simd schedule(static)", "#pragma omp parallel for simd schedule(static, 4096)"]]}
FOLDED = {"example": "elementwise/cpp", "say": "Scale folded in.", "edits": [["y[i] = v / (1.0f + std::exp(-v)) * scale;", "y[i] = (v * scale) / (1.0f + std::exp(-v));"]]}
RECOMMENDATIONS = [
    "Hand each OpenMP thread chunks of 4096 elements (schedule(static, 4096)) so the 1.0 MB streams through L1 chunk by chunk.",
    "Fold the scale into the numerator to take one multiply off the loop over 1.0 MB.",
]
SCRIPTS = {
    "claude-gen": [render_item(item, "story") for item in (SYNTAX_ERROR, WRONG_VALUES, CORRECT, BLOCKED, FOLDED)],
    "claude-analyst": RECOMMENDATIONS,
}


class FakeMessagesAPI:
    """POST /v1/messages: replies from the script of the requested model; the first call is refused as overloaded."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.served = {model: 0 for model in SCRIPTS}
        self.app = Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])

    async def messages(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.seen.append({"auth": request.headers.get("authorization"), "body": body})
        if len(self.seen) == 1:
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            return JSONResponse(error, status_code=529, headers={"retry-after-ms": "0"})
        model = body["model"]
        text = SCRIPTS[model][self.served[model]]
        self.served[model] += 1
        return JSONResponse({
            "id": f"msg_{len(self.seen)}", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 1000, "output_tokens": 400, "cache_read_input_tokens": 800},
        })

    def prompts(self, model: str) -> list[str]:
        return [s["body"]["messages"][0]["content"] for s in self.seen[1:] if s["body"]["model"] == model]


async def test_the_anthropic_story_carries_each_failure_and_recommendation_into_the_next_prompt(session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeMessagesAPI()
    async with serving(fake.app) as url:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        job = Job(
            problems=["elementwise"], models=["anthropic:claude-gen"], analysis_model="anthropic:claude-analyst",
            settings=quick(iterations=5), out=tmp_path, command=["kfoundry", "optimize", "elementwise"],
        )
        with anyio.fail_after(180):
            (run,) = await run_job(job, server=session)

    assert [a.state.value for a in run.attempts] == ["compilation_failure", "mismatch", "correct", "correct", "correct"]
    assert [a.prompt_kind for a in run.attempts] == ["generate", "fix", "fix", "optimize", "optimize"]
    folder = tmp_path / "elementwise" / "anthropic-claude-gen"

    # Every request: bearer key, the cached fixed system part, one user turn.
    assert len(fake.seen) == 1 + 5 + 2
    for seen in fake.seen:
        assert seen["auth"] == "Bearer test-key"
        assert seen["body"]["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert seen["body"]["max_tokens"] == 16000
    generated, analysed = fake.prompts("claude-gen"), fake.prompts("claude-analyst")
    assert len(generated) == 5 and len(analysed) == 2

    compiled = CompileResult.model_validate_json((folder / "iter_1" / "compile.json").read_text())
    assert compiled.diagnostics and compiled.diagnostics[0] in generated[1]
    verified = VerifyResult.model_validate_json((folder / "iter_2" / "verify.json").read_text())
    assert verified.mismatch is not None and verified.mismatch.message in generated[2]
    assert run.attempts[3].based_on == "iter_3"
    for asked, optimized in zip(analysed, run.attempts[3:], strict=True):  # the digest of the best so far, when asked
        digest = AnalysisResult.model_validate_json((folder / str(optimized.based_on) / "analysis.json").read_text()).digest
        assert digest in asked
    assert RECOMMENDATIONS[0] in generated[3] and RECOMMENDATIONS[1] in generated[4]
    assert RECOMMENDATIONS[0] in analysed[1]  # what was tried goes back to the analysis agent

    expected = {
        "iter_1": {"prompt.md", "response.md", "candidate.py", "compile.json"},
        "iter_2": {"prompt.md", "response.md", "candidate.py", "compile.json", "verify.json"},
        "iter_3": {"prompt.md", "response.md", "candidate.py", "compile.json", "verify.json", "profile.json", "analysis.json"},
    }
    optimized = expected["iter_3"] | {"recommendation.md", "analysis_prompt.md", "analysis_response.md"}
    for name in ("iter_1", "iter_2", "iter_3", "iter_4", "iter_5"):
        present = {p.name for p in (folder / name).iterdir()}
        assert expected.get(name, optimized) | {"attempt.json"} <= present, name
    assert (folder / "iter_5" / "recommendation.md").read_text().startswith(RECOMMENDATIONS[1])

    report = (folder / "report.md").read_text()
    for needle in ("compilation_failure", "mismatch", "optimize", "vs eager", "% SOL", "★", "speedup.png", RECOMMENDATIONS[0][:40]):
        assert needle in report, needle
    summary = (tmp_path / "report.md").read_text()
    assert "fast_1" in summary and "geomean vs eager" in summary and "anthropic:claude-gen" in summary
    for png in (folder / "speedup.png", tmp_path / "speedup.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["versions"]["kernel-foundry"] and manifest["server"]["name"] == "kernel-foundry"
    assert manifest["backend"]["name"] == "cpp" and manifest["analysis_model"] == "anthropic:claude-analyst"
    assert [a["folder"] for a in manifest["attempts"]] == ["iter_1", "iter_2", "iter_3", "iter_4", "iter_5"]
    assert all(any(line.startswith("kfoundry verify") for line in a["replay"]) for a in manifest["attempts"])
    assert json.loads((tmp_path / "manifest.json").read_text())["runs"][0]["best"] == run.best
