"""Clients we did not write against `kfoundry serve`: the official MCP Inspector CLI (stdio, and streamable
HTTP with a token) and the MCP conformance suite's server scenarios that apply to this server.

Each runs only where its package is installed (nothing is fetched: these tests must not need the
network): ``mcp-inspector`` / ``conformance`` on PATH, the package in the global npm root or the
npx cache (run through ``npx --no-install``), or a command named by ``KFOUNDRY_INSPECTOR`` /
``KFOUNDRY_CONFORMANCE``. The suite needs Node 22 or later. ``KFOUNDRY_TRANSCRIPT_DIR`` keeps the
Inspector's HTTP transcript and the suite's results.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / name) for name in ("http", "server")]

from http_support import TOKENS, server_env, start_server, stop_server  # noqa: E402

from kfoundry import examples  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PACKAGE = "@modelcontextprotocol/inspector"
SUITE = "@modelcontextprotocol/conformance"
#: the suite's server scenarios that need nothing but this server: the others call its own fixture tools
#: (test_simple_text, test_image_content, ...), resources (test://static-text), prompts, or logging and
#: completion, which this server does not declare (it answers -32601 for them, as it should)
APPLICABLE = ("server-initialize", "ping", "tools-list", "server-sse-multiple-streams", "resources-list", "prompts-list", "dns-rebinding-protection")
REFERENCE = examples.source("elementwise")
SOLUTION = examples.source("elementwise", "cpp")


def _node_roots() -> list[Path]:
    roots = [Path.home() / ".npm" / "_npx"]
    roots = [p / "node_modules" for p in roots[0].glob("*")] if roots[0].is_dir() else []
    npm = shutil.which("npm")
    if npm is not None:
        try:
            found = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=20, check=False).stdout.strip()
        except subprocess.TimeoutExpired:
            found = ""
        if found:
            roots.append(Path(found))
    return roots


def installed(package: str, binary: str, variable: str) -> tuple[list[str] | None, str]:
    """The command that runs ``package``, or None and why not."""
    named = os.environ.get(variable)
    if named:
        return shlex.split(named), ""
    if (found := shutil.which(binary)) is not None:
        return [found], ""
    npx = shutil.which("npx")
    if npx is not None and any((root / package / "package.json").is_file() for root in _node_roots()):
        return [npx, "--no-install", package], ""
    return None, (
        f"{package} is not installed here (npx {'found' if npx else 'not found'}; the package is in neither the global npm root "
        f"nor the npx cache), and these tests fetch nothing; install it with `npm i -g {package}` or set {variable}"
    )


COMMAND, WHY_NOT = installed(PACKAGE, "mcp-inspector", "KFOUNDRY_INSPECTOR")
needs_inspector = pytest.mark.skipif(COMMAND is None, reason=WHY_NOT)
SUITE_COMMAND, SUITE_WHY_NOT = installed(SUITE, "conformance", "KFOUNDRY_CONFORMANCE")
needs_suite = pytest.mark.skipif(SUITE_COMMAND is None, reason=SUITE_WHY_NOT)


async def run_inspector(*arguments: str, within: float = 300.0, warnings: list[str] | None = None) -> dict[str, Any]:
    """One Inspector CLI run; its JSON output (and, into ``warnings``, what it warned about)."""
    assert COMMAND is not None
    with anyio.fail_after(within):
        done = await anyio.run_process([*COMMAND, "--cli", *arguments], check=False)
    out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"{arguments}\n{out[-2000:]}\n{err[-2000:]}"
    if warnings is not None:
        warnings += [line for line in err.splitlines() if line.startswith(("Warning:", "Error:"))]
    return json.loads(out)


def tool_args(arguments: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for key, value in arguments.items():
        flags += ["--tool-arg", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return flags


@needs_inspector
async def test_the_inspector_lists_and_calls_tools_over_stdio(tmp_path: Path) -> None:
    env = server_env(tmp_path / "home", tokens=None)
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"kfoundry": {"command": sys.executable, "args": ["-m", "kfoundry.cli", "serve"], "env": env}}}))
    server = ["--config", str(config), "--server", "kfoundry"]

    portability: list[str] = []
    # --strict: the Inspector's check that the schemas map onto the stricter dialects some model providers use
    listed = await run_inspector(*server, "--method", "tools/list", "--strict", warnings=portability)
    called = await run_inspector(*server, "--method", "tools/call", "--tool-name", "backends")

    assert portability == []
    assert {tool["name"] for tool in listed["tools"]} == {"compile", "verify", "profile", "analyze_profile", "translate_reference", "backends"}
    assert called["structuredContent"]["best"] == "cpp"


@needs_inspector
async def test_the_inspector_calls_every_tool_over_http_with_a_token(tmp_path: Path) -> None:
    server = await start_server(tmp_path / "home")
    transcript: list[dict[str, Any]] = []
    target = [server.mcp_url, "--transport", "http", "--header", f"Authorization: Bearer {TOKENS['alice']}"]

    async def call(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = await run_inspector(*target, "--method", "tools/call", "--tool-name", tool, *tool_args(arguments))
        transcript.append({"tool": tool, "arguments": sorted(arguments), "result": result})
        assert not result.get("isError"), result
        return result["structuredContent"]

    try:
        listed = await run_inspector(*target, "--method", "tools/list")
        transcript.append({"method": "tools/list", "tools": [tool["name"] for tool in listed["tools"]]})
        assert (await call("backends", {}))["best"] == "cpp"
        assert (await call("translate_reference", {"reference": REFERENCE, "target_backend": "cpp"}))["prompt"]
        assert (await call("compile", {"backend": "cpp", "candidate": SOLUTION}))["state"] == "compiled"
        assert (await call("verify", {"backend": "cpp", "reference": REFERENCE, "candidate": SOLUTION, "trials": 1}))["state"] == "correct"
        profiled = await call("profile", {"backend": "cpp", "reference": REFERENCE, "candidate": SOLUTION, "baselines": ["eager"], "reps": 3, "trials": 1})
        assert profiled["state"] == "correct"
        assert (await call("analyze_profile", {"profile": profiled["run_id"]}))["recommendation"]
    finally:
        await stop_server(server)
        kept = os.environ.get("KFOUNDRY_TRANSCRIPT_DIR")
        if kept:
            Path(kept).mkdir(parents=True, exist_ok=True)
            (Path(kept) / "inspector-http-transcript.json").write_text(json.dumps(transcript, indent=1))


@needs_suite
@pytest.mark.parametrize("scenario", APPLICABLE)
async def test_the_conformance_suite_passes_every_scenario_that_applies(tmp_path: Path, scenario: str) -> None:
    assert SUITE_COMMAND is not None
    # The suite's client sends no token: a loopback server without tokens, as on a developer's laptop.
    home = tmp_path / "home"
    server = await start_server(home, env=server_env(home, tokens=None))
    results = Path(os.environ.get("KFOUNDRY_TRANSCRIPT_DIR") or tmp_path) / "conformance"
    try:
        with anyio.fail_after(300):
            done = await anyio.run_process(
                [*SUITE_COMMAND, "server", "--url", server.mcp_url, "--scenario", scenario, "-o", str(results)], check=False,
            )
    finally:
        await stop_server(server)

    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, out[-3000:]
    assert " 0 failed" in out, out[-3000:]
