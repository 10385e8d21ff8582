"""Model-written analysis is optional, is given the rules' digest (never the raw profile), and is checked for citing it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kfoundry.clients.agents import ANALYSIS_SYSTEM, AnalysisAgent, cites
from kfoundry.clients.providers.scripted import ScriptedModel
from kfoundry.profilers.analysis import Host, diagnose
from kfoundry.schema import AnalysisResult, ProfileResult

pytestmark = pytest.mark.anyio
FIXTURE = Path(__file__).parent / "profiles" / "cpu_gemm_simd_mt.json"


def _analysis() -> tuple[AnalysisResult, str]:
    data = json.loads(FIXTURE.read_text())
    profile = ProfileResult.model_validate(data["profile"])
    d = diagnose(profile, data["candidate_source"], host=Host.model_validate(data["host"]))
    result = AnalysisResult(bottleneck=d.bottleneck, digest=d.digest, recommendation=d.recommendation, evidence=d.evidence, run_id="analyze-x")
    return result, data["candidate_source"]


def test_the_analysis_agent_is_told_to_cite_the_digest_and_keep_to_the_policy_and_backend() -> None:
    assert "Cite the digest's own numbers" in ANALYSIS_SYSTEM
    assert "strict" in ANALYSIS_SYSTEM and "CPU advice for CPU backends" in ANALYSIS_SYSTEM


async def test_without_a_model_the_rules_recommendation_passes_through_unchanged() -> None:
    analysis, source = _analysis()

    advice = await AnalysisAgent(None).recommend(analysis, source, "cpp", "cpu", [], tag="t")

    assert advice.text == analysis.recommendation and advice.source == "rules" and advice.prompt is None


async def test_a_model_gets_the_digest_not_the_raw_profile_and_a_reply_quoting_it_is_marked_as_citing() -> None:
    analysis, source = _analysis()
    rate = next(w for w in analysis.digest.split() if w.replace(".", "").isdigit() and "." in w)
    model = ScriptedModel("analyst", role="analysis", items=[f"Register-block the dot products: the GEMM runs at {rate} GFLOP/s."])

    advice = await AnalysisAgent(model).recommend(analysis, source, "cpp", "cpu", [], tag="t")

    (request,) = model.requests
    assert analysis.digest in request.prompt
    assert '"breakdown"' not in request.prompt and "baseline_breakdown" not in request.prompt
    assert advice.cites_digest is True and advice.source == "scripted:analyst"


async def test_a_reply_that_quotes_no_number_of_the_digest_is_set_aside_for_the_rules_recommendation() -> None:
    analysis, source = _analysis()
    model = ScriptedModel("analyst", role="analysis", items=["Unroll the inner loop by eight."])

    advice = await AnalysisAgent(model).recommend(analysis, source, "cpp", "cpu", [], tag="t")

    assert advice.cites_digest is False
    assert advice.text == analysis.recommendation and advice.source == "rules"
    assert advice.reply is not None and advice.reply.text == "Unroll the inner loop by eight."  # kept for the record
    assert advice.error == "the reply quoted no number of the digest"


def test_citing_means_quoting_a_measured_number_not_a_single_digit() -> None:
    digest = "candidate 22.6 ms | eager 11.5 ms\n  100.0%  22.6 ms x1 own gemm 23.8 GFLOP/s (50% of peak)"

    assert cites("Blocking would lift the 23.8 GFLOP/s kernel", digest)
    assert not cites("Use 4 rows by 8 columns", digest)
    # Digits inside names are not measurements, in the reply or in the digest.
    assert not cites("Keep the fp32 accumulator on sm90", digest + "\npolicy strict, float32, sm90")
