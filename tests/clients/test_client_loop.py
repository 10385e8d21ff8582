"""The loop with scripted models against an in-process server: modes, stopping rules, resume, hooks, prompt edits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from client_support import CORRECT, CORRECT_SOURCE, NO_CODE, SYNTAX_ERROR, Gauge, Scripts, quick, run_scripted

from kfoundry import examples
from kfoundry.clients.edits import AuxCode, PromptEdit, PromptEdits
from kfoundry.clients.records import TranslateFrom
from kfoundry.clients.session import ToolCallError
from kfoundry.schema import AnalysisResult

pytestmark = pytest.mark.anyio

RUN = Path("elementwise") / "scripted-generation"


def states(run) -> list[str]:
    return [a.state.value for a in run.attempts]


# Replies cite the problem's 1.0 MB of compulsory traffic, which every digest of this problem states: advice
# that quotes none of the digest's numbers is set aside for the rules' own.
UNROLL = "Unroll by eight: the 1.0 MB pass is bound by its loop overhead."
STREAM = "Use streaming stores for the 1.0 MB written."
VECTORISE = "Vectorise the loop over the 1.0 MB of inputs."

async def test_single_shot_mode_makes_one_attempt_and_keeps_every_artifact(session, tmp_path: Path) -> None:
    scripts = Scripts([CORRECT, CORRECT])
    run = await run_scripted(session, tmp_path, scripts, quick(mode="single", iterations=5))
    assert states(run) == ["correct"]
    assert run.best == "iter_1" and run.stop_reason.startswith("single-shot")
    folder = tmp_path / RUN / "iter_1"
    for name in ("prompt.md", "response.md", "candidate.py", "compile.json", "verify.json", "profile.json", "analysis.json", "attempt.json"):
        assert (folder / name).is_file(), name
    assert (folder / "candidate.py").read_text() == CORRECT_SOURCE
    assert run.attempts[0].speedup_vs_eager is not None and run.attempts[0].bottleneck is not None
    manifest = json.loads((tmp_path / RUN / "manifest.json").read_text())
    assert any(line.startswith("kfoundry verify --backend cpp") for line in manifest["attempts"][0]["replay"])
    assert set(manifest["attempts"][0]["run_ids"]) == {"compile", "verify", "profile", "analysis"}


async def test_a_reply_without_code_is_a_generation_failure_that_counts_as_an_iteration(session, tmp_path: Path) -> None:
    scripts = Scripts([NO_CODE, NO_CODE, NO_CODE])
    run = await run_scripted(session, tmp_path, scripts, quick(iterations=2))
    assert states(run) == ["generation_failure", "generation_failure"]
    assert run.stop_reason == "iteration budget spent (2 rounds)"
    second = scripts.prompts()[1]
    assert "failed with state `generation_failure`" in second and NO_CODE in second
    assert not (tmp_path / RUN / "iter_1" / "candidate.py").exists()


async def test_a_model_that_gives_no_reply_is_a_generation_failure(session, tmp_path: Path) -> None:
    run = await run_scripted(session, tmp_path, Scripts([{"error": "connection reset by peer"}]), quick())
    assert states(run) == ["generation_failure"]
    assert "connection reset by peer" in run.attempts[0].detail
    assert "connection reset by peer" in (tmp_path / RUN / "iter_1" / "response.md").read_text()


async def test_the_loop_stops_once_the_best_reaches_the_target_fraction_of_speed_of_light(session, tmp_path: Path) -> None:
    run = await run_scripted(session, tmp_path, Scripts([CORRECT, CORRECT, CORRECT]), quick(iterations=3, target_sol=1e-9))
    assert states(run) == ["correct"]
    assert run.stop_reason.startswith("target reached")


async def test_the_loop_stops_after_patience_optimization_rounds_without_a_faster_candidate(session, tmp_path: Path) -> None:
    scripts = Scripts([CORRECT, NO_CODE, NO_CODE, CORRECT], [UNROLL, STREAM])
    run = await run_scripted(session, tmp_path, scripts, quick(iterations=6, patience=2))
    assert states(run) == ["correct", "generation_failure", "generation_failure"]
    assert run.stop_reason.startswith("no faster candidate in 2 optimization rounds")
    digest = AnalysisResult.model_validate_json((tmp_path / RUN / "iter_1" / "analysis.json").read_text()).digest
    assert [digest in r.prompt for r in scripts.analysis.requests] == [True, True]
    assert UNROLL in scripts.analysis.requests[1].prompt  # the history of what was tried
    optimize = scripts.prompts()[1]
    assert "Make it faster" in optimize and UNROLL in optimize and CORRECT_SOURCE.strip() in optimize
    assert (tmp_path / RUN / "iter_3" / "recommendation.md").read_text().startswith(STREAM)


async def test_repeated_sampling_runs_k_candidates_per_round_within_the_concurrency_limit_and_the_best_continues(session, tmp_path: Path) -> None:
    scripts = Scripts([NO_CODE, CORRECT, NO_CODE, NO_CODE, NO_CODE, NO_CODE], [VECTORISE])
    gauge = Gauge(scripts.generation, limit=2)
    scripted = scripts.generation
    scripts.generation = gauge  # type: ignore[assignment]
    run = await run_scripted(session, tmp_path, scripts, quick(mode="sampling", samples=3, concurrency=2, iterations=2))
    assert [a.folder for a in run.attempts] == ["iter_1_s1", "iter_1_s2", "iter_1_s3", "iter_2_s1", "iter_2_s2", "iter_2_s3"]
    assert gauge.peak == 2
    round_one = [a for a in run.attempts if a.iteration == 1]
    assert sorted(a.state.value for a in round_one) == ["correct", "generation_failure", "generation_failure"]
    best = next(a for a in round_one if a.correct)
    assert run.best == best.folder
    later = [r.prompt for r in scripted.requests[3:]]
    assert len(later) == 3 and all(VECTORISE in p and CORRECT_SOURCE.strip() in p for p in later)
    assert {a.based_on for a in run.attempts if a.iteration == 2} == {best.folder}


async def test_resume_keeps_finished_iterations_and_goes_on_from_the_best_on_disk(session, tmp_path: Path) -> None:
    first = await run_scripted(session, tmp_path, Scripts([CORRECT, NO_CODE]), quick(iterations=2))
    assert states(first) == ["correct", "generation_failure"]
    kept = (tmp_path / RUN / "iter_1" / "attempt.json").read_text()
    (tmp_path / RUN / "iter_2" / "attempt.json").unlink()  # as if interrupted during iteration 2

    again = Scripts([NO_CODE])
    resumed = await run_scripted(session, tmp_path, again, quick(iterations=2, resume=True), analysis_model="rules")
    assert states(resumed) == ["correct", "generation_failure"]
    assert len(again.generation.requests) == 1 and "Make it faster" in again.prompts()[0]
    assert (tmp_path / RUN / "iter_1" / "attempt.json").read_text() == kept
    rules = AnalysisResult.model_validate_json((tmp_path / RUN / "iter_1" / "analysis.json").read_text()).recommendation
    assert (tmp_path / RUN / "iter_2" / "recommendation.md").read_text().startswith(rules)


async def test_a_hook_gets_results_and_artifact_paths_on_stdin_and_its_json_is_merged_into_the_attempt(session, tmp_path: Path) -> None:
    hook = tmp_path / "score.py"
    hook.write_text(
        "import json, sys\n"
        "data = json.load(sys.stdin)\n"
        "print(json.dumps({'e2e_ms': 12.5, 'saw': data['state'], 'compile_state': data['results']['compile']['state'],\n"
        "                  'candidate_exists': __import__('os').path.isfile(data['artifacts']['candidate.py'])}))\n"
    )
    broken = tmp_path / "broken.py"
    broken.write_text("print('not json')\n")
    run = await run_scripted(session, tmp_path / "out", Scripts([SYNTAX_ERROR]), quick(hooks=[str(hook), str(broken)]))
    scores = run.attempts[0].scores
    assert scores["e2e_ms"] == 12.5 and scores["saw"] == "compilation_failure" == scores["compile_state"]
    assert scores["candidate_exists"] is True
    assert "stdout is not JSON" in scores["broken_error"]
    assert json.loads((tmp_path / "out" / RUN / "iter_1" / "hook.json").read_text()) == scores


async def test_prompt_overrides_and_appends_apply_to_their_chosen_iterations(session, tmp_path: Path) -> None:
    (tmp_path / "override.j2").write_text("Custom prompt after {{ state }} (original had {{ prompt | length > 100 }})")
    (tmp_path / "append.j2").write_text("APPENDED for iteration {{ iteration }}")
    edits = PromptEdits(edits=[
        PromptEdit.load("override", f"{tmp_path / 'override.j2'}:2"),
        PromptEdit.load("append", f"{tmp_path / 'append.j2'}:1,3-"),
    ])
    scripts = Scripts([NO_CODE] * 3)
    await run_scripted(session, tmp_path / "out", scripts, quick(iterations=3, edits=edits))
    first, second, third = scripts.prompts()
    assert first.rstrip().endswith("APPENDED for iteration 1") and "## Output contract" in first
    assert second == "Custom prompt after generation_failure (original had True)"
    assert third.rstrip().endswith("APPENDED for iteration 3")
    assert (tmp_path / "out" / RUN / "iter_2" / "prompt.md").read_text() == second


async def test_auxiliary_code_is_injected_into_the_chosen_iterations(session, tmp_path: Path) -> None:
    helpers = tmp_path / "helpers"
    (helpers / "sub").mkdir(parents=True)
    (helpers / "vec.h").write_text("static inline float twice(float x) { return 2 * x; }\n")
    (helpers / "sub" / "old.py").write_text("OLD_KERNEL = 'v1'\n")
    scripts = Scripts([NO_CODE, NO_CODE])
    await run_scripted(session, tmp_path / "out", scripts, quick(iterations=2, edits=PromptEdits(aux=[AuxCode.load(f"{helpers}:2")])))
    first, second = scripts.prompts()
    assert "## Auxiliary code" not in first
    assert "## Auxiliary code" in second and "### vec.h" in second and "twice(float x)" in second and "OLD_KERNEL = 'v1'" in second


async def test_guardrails_reach_verify_and_a_banned_pattern_rejects_the_candidate(session, tmp_path: Path) -> None:
    scripts = Scripts([CORRECT, NO_CODE])
    run = await run_scripted(session, tmp_path, scripts, quick(iterations=2, guardrails={"banned": [r"omp\s+parallel"]}))
    assert states(run) == ["rejected", "generation_failure"]
    verify = json.loads((tmp_path / RUN / "iter_1" / "verify.json").read_text())
    assert any(f["code"] == "banned_pattern" for f in verify["findings"])
    first, second = scripts.prompts()
    assert r"must not match the regular expression `omp\s+parallel`" in first
    assert "banned_pattern" in second and "failed with state `rejected`" in second


async def test_translating_from_another_backend_starts_from_its_kernel(session, tmp_path: Path) -> None:
    source = examples.path("elementwise", "triton")
    scripts = Scripts([NO_CODE])
    settings = quick(translate_from=TranslateFrom(backend="triton", path=str(source), source=source.read_text()))
    run = await run_scripted(session, tmp_path, scripts, settings)
    assert run.attempts[0].prompt_kind == "translate"
    prompt = scripts.prompts()[0]
    assert "Translate the working triton candidate" in prompt and "@triton.jit" in prompt


async def test_a_precision_the_server_does_not_offer_stops_the_job_before_any_model_call(session, tmp_path: Path) -> None:
    scripts = Scripts([CORRECT])
    with pytest.raises(ToolCallError, match=r"precision 'fp8' is not a policy the server offers; it offers: strict, tf32"):
        await run_scripted(session, tmp_path, scripts, quick(precision="fp8"))
    assert scripts.prompts() == []


async def test_guardrails_the_server_rejects_come_back_as_a_tool_error_that_stops_the_run(session, tmp_path: Path) -> None:
    run = await run_scripted(session, tmp_path, Scripts([CORRECT]), quick(guardrails={"banned": ["("]}))
    assert run.error is not None and "verify" in run.error and "invalid regex" in run.error
    assert run.stop_reason.startswith("stopped by a tool error")
