"""Pieces of the client that need no server: providers, extraction, prompt-edit specs, reports, plots, hooks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from kfoundry.clients.edits import IterationSet, split_spec
from kfoundry.clients.extract import extract_candidate
from kfoundry.clients.hooks import hook_command, run_hook
from kfoundry.clients.plot import plot_run
from kfoundry.clients.providers import ModelError, ModelOptions, ModelRequest, load_model, parse_spec, slug
from kfoundry.clients.providers.anthropic import AnthropicModel
from kfoundry.clients.providers.openai_compatible import OpenAICompatibleModel
from kfoundry.clients.providers.scripted import ScriptedModel, story_path
from kfoundry.clients.records import Attempt, RunSummary
from kfoundry.clients.report import fast_p, geomean, run_report, summary_report
from kfoundry.schema import State

REQUEST = ModelRequest(role="generation", system="fixed part", prompt="write the kernel", tag="iter_1")
MODULE = "import torch\n\nclass ModelNew(torch.nn.Module):\n    pass\n"


def message(text: str) -> dict:
    return {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 5},
    }


def test_the_last_python_block_defining_model_new_is_the_candidate() -> None:
    reply = f"First try:\n```python\nclass Helper: pass\n```\nFinal:\n````python\n{MODULE}```\n````\nDone."
    assert extract_candidate(reply) == MODULE + "```\n"
    assert extract_candidate("```cpp\nclass ModelNew {};\n```") is None
    assert extract_candidate("No code today.") is None
    assert extract_candidate(MODULE) == MODULE  # a bare module counts when it parses
    assert extract_candidate(f"```python\n{MODULE}") == MODULE  # an unclosed last block runs to the end


def test_iteration_lists_and_file_specs_parse_as_documented() -> None:
    chosen = IterationSet.parse("1,4-6,9-")
    assert [n for n in range(1, 12) if n in chosen] == [1, 4, 5, 6, 9, 10, 11]
    assert 7 in IterationSet.parse("all") and chosen.describe() == "1,4-6,9-"
    assert split_spec("hints.md:2-3") == (Path("hints.md"), IterationSet.parse("2-3"))
    assert split_spec("C:notes.md") == (Path("C:notes.md"), IterationSet())
    with pytest.raises(ValueError, match="bad iteration list"):
        IterationSet.parse("two")


def test_model_specs_pick_a_provider_and_name_a_folder() -> None:
    assert parse_spec("claude-opus-4-1") == ("anthropic", "claude-opus-4-1")
    assert parse_spec("openai:qwen@http://h:8000/v1") == ("openai", "qwen@http://h:8000/v1")
    assert slug("scripted:stories/elementwise_cpp.json") == "scripted-elementwise_cpp"
    assert slug("openai:qwen2.5-coder:7b@http://h/v1") == "openai-qwen2.5-coder-7b"
    with pytest.raises(ValueError, match="known providers: anthropic, openai, scripted"):
        load_model("bogus:x", "generation")


@pytest.mark.anyio
async def test_the_scripted_model_replays_its_role_in_order_and_then_gives_up(tmp_path: Path) -> None:
    story = tmp_path / "s.json"
    story.write_text(json.dumps({"generation": ["a", {"text": "b"}], "analysis": ["advice"]}))
    model = load_model(f"scripted:{story}", "generation")
    assert [(await model.complete(REQUEST)).text for _ in range(2)] == ["a", "b"]
    with pytest.raises(ModelError, match="only 2 generation responses"):
        await model.complete(REQUEST)
    assert (await load_model(f"scripted:{story}", "analysis").complete(REQUEST)).text == "advice"
    assert story_path("elementwise_cpp.json").name == "elementwise_cpp.json"  # bundled stories are found by name
    bad = ScriptedModel("x", "generation", items=[{"example": "elementwise/cpp", "edits": [["not there", ""]]}])
    with pytest.raises(ValueError, match="edit target"):
        await bad.complete(REQUEST)


@pytest.mark.anyio
async def test_the_anthropic_provider_caches_the_system_part_sends_thinking_and_retries_overload() -> None:
    seen: list[dict] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        if len(seen) == 1:
            return httpx2.Response(529, json={"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}, headers={"retry-after": "7"})
        return httpx2.Response(200, json=message("```python\nclass ModelNew: pass\n```"))

    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    client = anthropic.AsyncAnthropic(api_key="k", base_url="http://fake.local", max_retries=0, http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))
    model = AnthropicModel("claude-x", "generation", ModelOptions(max_tokens=8000, thinking_budget=2048, effort="high"), client=client, sleep=record)
    reply = await model.complete(REQUEST)
    assert reply.text.startswith("```python") and reply.output_tokens == 5
    assert waits == [7.0]
    body = seen[-1]
    assert body["system"] == [{"type": "text", "text": "fixed part", "cache_control": {"type": "ephemeral"}}]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048} and body["output_config"] == {"effort": "high"}
    assert body["messages"] == [{"role": "user", "content": "write the kernel"}]


@pytest.mark.anyio
async def test_the_anthropic_provider_does_not_retry_a_bad_request() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(400, json={"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens too large"}})

    client = anthropic.AsyncAnthropic(api_key="k", base_url="http://fake.local", max_retries=0, http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))
    with pytest.raises(ModelError, match="max_tokens too large"):
        await AnthropicModel("claude-x", "generation", ModelOptions(), client=client).complete(REQUEST)


@pytest.mark.anyio
async def test_the_openai_compatible_provider_posts_chat_completions_and_retries_rate_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx2.Response(429, text="slow down", headers={"retry-after-ms": "0"})
        return httpx2.Response(200, json={"model": "qwen", "choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}], "usage": {"completion_tokens": 3}})

    async def no_wait(delay: float) -> None:
        assert delay == 0.0

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    model = OpenAICompatibleModel("qwen@http://vllm.local:8000/v1", "generation", ModelOptions(seed=7, temperature=0.2), client=client, sleep=no_wait)
    reply = await model.complete(REQUEST)
    assert (reply.text, reply.output_tokens, reply.stop_reason) == ("hello", 3, "stop")
    assert str(seen[-1].url) == "http://vllm.local:8000/v1/chat/completions"
    body = json.loads(seen[-1].content)
    assert body["messages"] == [{"role": "system", "content": "fixed part"}, {"role": "user", "content": "write the kernel"}]
    assert (body["model"], body["seed"], body["temperature"], body["max_tokens"]) == ("qwen", 7, 0.2, 16000)


def _attempt(iteration: int, state: State, eager: float | None = None, sol: float | None = None) -> Attempt:
    return Attempt(iteration=iteration, folder=f"iter_{iteration}", phase="functional", prompt_kind="generate", state=state,
                   speedup_vs_eager=eager, sol_fraction=sol, candidate_ms=1.0 if eager else None)


def _run(problem: str, attempts: list[Attempt], best: str | None) -> RunSummary:
    return RunSummary(problem=problem, model="m", analysis_model="rules", backend="cpp", mode="iterative", folder=f"/o/{problem}/m",
                      attempts=attempts, best=best, stop_reason="budget")


def test_fast_p_and_geomean_count_problems_whose_best_is_correct_and_faster() -> None:
    runs = [
        _run("a", [_attempt(1, State.correct, 2.0, 0.4)], "iter_1"),
        _run("b", [_attempt(1, State.correct, 0.5)], "iter_1"),
        _run("c", [_attempt(1, State.mismatch)], None),
        _run("d", [_attempt(1, State.correct, 8.0)], "iter_1"),
    ]
    assert fast_p(runs) == 0.5 and fast_p(runs, p=3.0) == 0.25
    assert geomean([2.0, 0.5, 8.0]) == pytest.approx(2.0)
    text = summary_report(runs, Path("/o"))
    assert "| m | 4 | 3 | 50.0% | 2.00x | — |" in text
    assert "[a](a/m/report.md)" in text


def test_the_run_report_marks_the_best_and_the_plot_is_a_png(tmp_path: Path) -> None:
    run = _run("a", [_attempt(1, State.compilation_failure), _attempt(2, State.correct, 1.5, 0.1), _attempt(3, State.correct, 1.2)], "iter_2")
    text = run_report(run)
    assert "| iter 2 ★ | functional | generate | correct | 1 | 1.50x | — | 10.0% |" in text
    assert "**best: iter 2**" in text
    assert plot_run(run, tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.anyio
async def test_a_hook_that_fails_is_recorded_and_never_raises(tmp_path: Path) -> None:
    crash = tmp_path / "crash.py"
    crash.write_text("import sys\nsys.stderr.write('boom\\n')\nsys.exit(3)\n")
    assert (await run_hook(str(crash), {}, 30)) == {"crash_error": "exit 3: boom"}
    listing = tmp_path / "listing.py"
    listing.write_text("print('[1, 2]')\n")
    assert (await run_hook(str(listing), {}, 30)) == {"listing_error": "stdout must be one JSON object"}
    assert "could not start" in (await run_hook(str(tmp_path / "missing.sh"), {}, 30))["missing_error"]
    assert hook_command("score.py --fast") == [sys.executable, "score.py", "--fast"]


def test_results_from_a_newer_server_with_unknown_fields_still_parse() -> None:
    from kfoundry.clients.session import parse_result
    from kfoundry.schema import BackendsResult

    data = {"backends": [{"name": "cpp", "available": True, "shiny_new_field": 1}], "best": "cpp", "devices": ["cpu"], "also_new": "x"}
    parsed = parse_result(BackendsResult, data)
    assert parsed.backends[0].name == "cpp" and parsed.best == "cpp"
    with pytest.raises(ValueError):
        parse_result(BackendsResult, {"backends": "not a list", "best": "cpp", "devices": []})


def _book(backend: str, problem: str, **options: Any) -> Any:
    """A PromptBook from what the server sends: its ``backends`` entry and its ``translate_reference`` prompt."""
    from kfoundry import examples
    from kfoundry.backends import get_backend
    from kfoundry.clients.prompting import PromptBook
    from kfoundry.schema import ToolchainInfo, TranslateResult
    from kfoundry.tools.translate import render_prompt

    reference, source = examples.source(problem), options.get("translate_from")
    toolchain = ToolchainInfo(name=backend, available=True, marker=get_backend(backend).marker)
    prompt = render_prompt(reference, backend, source.backend, source.source) if source else render_prompt(reference, backend)
    translated = TranslateResult(prompt=prompt, target_backend=backend, source_backend=source.backend if source else "pytorch", run_id="test")
    return PromptBook(toolchain, translated, reference, **options)


def test_the_generation_prompt_states_the_declared_precision_policy() -> None:
    relaxed = _book("triton", "matmul_epilogue", precision="bf16").first().text
    strict = _book("triton", "matmul_epilogue").first().text

    assert "precision policy `bf16`" in relaxed and "float64 oracle" in relaxed
    assert "precision policy `strict`" in strict and 'input_precision="ieee"' in strict


def test_every_prompt_carries_the_backend_notes_the_server_wrote_into_its_translate_prompt() -> None:
    from kfoundry.backends import get_backend
    from kfoundry.schema import AnalysisResult, Bottleneck, State, VerifyResult

    book = _book("cpp", "elementwise")
    notes = get_backend("cpp").notes
    failure = VerifyResult(state=State.runtime_error, backend="cpp", trials=1, duration_s=0.1, run_id="v")
    analysis = AnalysisResult(bottleneck=Bottleneck.memory, digest="digest", recommendation="unroll", run_id="a")
    prompts = [book.first(), book.fix("print()", "", failure, "runtime_error", 1), book.optimize("print()", analysis, "unroll", [])]

    assert [notes in p.text for p in prompts] == [True, True, True]


def test_a_translation_prompt_carries_the_source_backends_notes_from_the_server() -> None:
    from kfoundry import examples
    from kfoundry.backends import get_backend
    from kfoundry.clients.records import TranslateFrom

    source = TranslateFrom(backend="triton", path="triton.py", source=examples.source("elementwise", "triton"))
    prompt = _book("cpp", "elementwise", translate_from=source).first()

    assert prompt.kind == "translate"
    assert f"Notes on triton: {get_backend('triton').notes}" in prompt.text and get_backend("cpp").notes in prompt.text


def _optimize_args(*argv: str) -> Any:
    import argparse

    from kfoundry.clients.cli import add_optimize_parser

    parser = argparse.ArgumentParser()
    add_optimize_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["optimize", "elementwise", "--backend", "cpp", "--model", "scripted:x", *argv])


def test_a_guardrails_file_is_sent_as_is_with_the_regex_flags_added_to_its_lists(tmp_path: Path) -> None:
    from kfoundry.clients.cli import build_job

    rules = {"banned": ["omp"], "rules": {"torch_compute": "warn"}, "min_own_kernel_share": 0.25}
    (tmp_path / "rails.json").write_text(json.dumps(rules))
    job = build_job(_optimize_args("--guardrails", str(tmp_path / "rails.json"), "--guardrail-banned", "asm", "--guardrail-required", "load_cpp"))

    assert job.settings.guardrails == {**rules, "banned": ["omp", "asm"], "required": ["load_cpp"]}
    assert build_job(_optimize_args()).settings.guardrails == {}
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        build_job(_optimize_args("--guardrails", str(tmp_path / "list.json")))
