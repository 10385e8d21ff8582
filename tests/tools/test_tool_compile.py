"""`compile` over MCP: compiled, compilation_failure (C++ and Python), generation_failure."""

from __future__ import annotations

import pytest
from candidates import CORRECT_CPP, CPP_ERROR_LINE, CPP_SYNTAX_ERROR, NO_MODELNEW, PYTHON_ERROR_LINE, PYTHON_SYNTAX_ERROR
from mcp import Client
from mcp_support import ok

pytestmark = pytest.mark.anyio


async def compile_(client: Client, candidate: str) -> dict:
    return await ok(client, "compile", {"backend": "cpp", "candidate": candidate, "timeout_s": 120})


async def test_a_bundled_cpp_solution_compiles_and_lists_its_exported_kernel(client: Client) -> None:
    data = await compile_(client, CORRECT_CPP)

    assert data["state"] == "compiled", data
    assert [k["name"] for k in data["kernels"]] == ["swish_scale"]
    assert data["error"] is None
    assert data["run_id"].startswith("compile-")
    assert data["duration_s"] > 0


async def test_a_cpp_syntax_error_is_a_compilation_failure_located_at_the_candidate_line(client: Client) -> None:
    data = await compile_(client, CPP_SYNTAX_ERROR)

    assert data["state"] == "compilation_failure", data
    located = [d for d in data["diagnostics"] if "undeclared_factor" in d]
    assert located, data["diagnostics"]
    assert located[0].startswith(f"candidate.py:{CPP_ERROR_LINE}:"), located
    assert data["error"]["type"] == "BuildError"


async def test_a_python_syntax_error_is_a_compilation_failure_with_its_line(client: Client) -> None:
    data = await compile_(client, PYTHON_SYNTAX_ERROR)

    assert data["state"] == "compilation_failure", data
    assert any(d.startswith(f"candidate.py:{PYTHON_ERROR_LINE}:") for d in data["diagnostics"]), data["diagnostics"]
    assert data["error"]["type"] == "SyntaxError"


async def test_a_module_without_modelnew_is_a_generation_failure(client: Client) -> None:
    data = await compile_(client, NO_MODELNEW)

    assert data["state"] == "generation_failure", data
    assert "ModelNew" in data["error"]["message"]
    assert "ModelNew" in data["next_step"]
