"""The client over real transports: `kfoundry optimize` spawning `kfoundry serve` over stdio, and streamable HTTP with a token."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from client_support import CORRECT, NO_CODE, Scripts, quick, serving

from kfoundry import examples
from kfoundry.cli import main
from kfoundry.clients.runner import Job, run_job
from kfoundry.clients.session import connect
from kfoundry.server.app import build_server
from kfoundry.server.http import HttpOptions, build_app

TOKEN = "client-test-token-0123456789"


def test_kfoundry_optimize_spawns_the_server_over_stdio_and_writes_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KFOUNDRY_SPARES", "1")  # reaches the child through the passed-through KFOUNDRY_* variables
    story = tmp_path / "story.json"
    story.write_text(json.dumps({"generation": [CORRECT]}))
    out = tmp_path / "out"
    code = main([
        "optimize", "elementwise", "--backend", "cpp", "--model", f"scripted:{story}", "--analysis-model", "rules",
        "--mode", "single", "--out", str(out), "--baselines", "eager", "--reps", "3", "--warmup", "1", "--trials", "1",
        "--profile-trials", "1", "--tool-timeout", "120",
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"report: {out / 'report.md'}" in captured.out and "best iter 1" in captured.out
    assert "correct" in captured.err  # the live progress view
    manifest = json.loads((out / "elementwise" / "scripted-story" / "manifest.json").read_text())
    assert manifest["server"]["transport"] == "stdio"
    assert (out / "elementwise" / "scripted-story" / "iter_1" / "profile.json").is_file()
    assert "| [elementwise]" in (out / "report.md").read_text()


def test_kfoundry_optimize_reports_an_unknown_problem_without_starting_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["optimize", "no_such_problem", "--backend", "cpp", "--model", "scripted:elementwise_cpp.json", "--out", str(tmp_path), "--quiet"])
    assert code == 1
    assert "neither a problem file nor a bundled problem" in capsys.readouterr().err


@pytest.mark.anyio
async def test_the_client_reaches_a_remote_server_over_streamable_http_with_a_bearer_token(tmp_path: Path) -> None:
    app = build_app(HttpOptions(host="127.0.0.1", port=0), tokens={"tester": TOKEN})
    scripts = Scripts([NO_CODE])
    async with serving(app) as url:
        job = Job(problems=["elementwise"], models=["scripted:generation"], analysis_model="rules", settings=quick(),
                  out=tmp_path, server=f"{url}/mcp", token=TOKEN, command=["test"])
        with anyio.fail_after(120):
            (run,) = await run_job(job, model_factory=scripts.factory)
    assert [a.state.value for a in run.attempts] == ["generation_failure"]
    assert "## The problem" in scripts.prompts()[0]
    manifest = json.loads((tmp_path / "elementwise" / "scripted-generation" / "manifest.json").read_text())
    assert manifest["server"]["transport"] == "http" and manifest["server"]["target"] == f"{url}/mcp"


@pytest.mark.anyio
async def test_the_client_answers_the_servers_sampling_requests_with_its_own_model() -> None:
    asked: list[str] = []

    async def sample(prompt: str, system: str | None, max_tokens: int) -> str:
        asked.append(prompt)
        return "```python\nclass ModelNew: ...\n```"

    async with connect(build_server(), sample=sample, timeout_s=120) as session:
        with anyio.fail_after(120):
            result = await session.client.call_tool(
                "translate_reference", {"reference": examples.source("elementwise"), "target_backend": "cpp", "sample": True}
            )
    assert not result.is_error and result.structured_content is not None
    assert result.structured_content["translation_source"] == "sampling"
    assert result.structured_content["translation"].startswith("```python")
    assert len(asked) == 1 and "## The problem" in asked[0]
