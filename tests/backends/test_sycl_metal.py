"""SYCL and Metal: compile where icpx / xcrun exist, otherwise unavailable with the reason; their candidates' shapes are recognised."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

from kfoundry import prompts
from kfoundry.backends import get_backend
from kfoundry.errors import Unavailable
from kfoundry.tools.runtime import resolve_backend

COMPILERS = {"sycl": "icpx", "metal": "xcrun"}
DEVICES = {"sycl": "Intel GPU (XPU)", "metal": "Apple GPU (MPS)"}


def _resolve(tree: ast.Module):  # noqa: ANN202 - the scans' own resolver, built the way ast_rules builds it
    from kfoundry.verify.ast_rules import _Scan

    scan = _Scan()
    scan.visit(tree)
    return scan.root


@pytest.mark.parametrize("name", ["sycl", "metal"])
def test_without_its_compiler_the_backend_is_unavailable_and_names_what_is_missing(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An empty PATH: the compiler is absent whether or not this host has it.
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which(COMPILERS[name]) is None

    info = get_backend(name).probe()

    assert not info.available and not info.compile_only
    assert info.reason.startswith(f"no {DEVICES[name]} and no {COMPILERS[name]} on PATH")
    assert info.marker == get_backend(name).marker


@pytest.mark.parametrize("name", ["sycl", "metal"])
def test_without_its_compiler_compile_only_is_unsupported_with_the_reason(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An empty PATH: the compiler is absent whether or not this host has it.
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which(COMPILERS[name]) is None

    outcome = get_backend(name).compile_only(prompts.oneshot(name)[1], timeout_s=60)

    assert not outcome.ok and outcome.unsupported.startswith(f"{COMPILERS[name]} is not on PATH here")
    assert outcome.diagnostics == [f"candidate.py: error: the {name} backend has no compile-only mode: {outcome.unsupported}"]


@pytest.mark.parametrize("name", ["sycl", "metal"])
def test_verify_and_profile_refuse_the_backend_here_with_its_reason(name: str) -> None:
    with pytest.raises(Unavailable, match=re.escape(f"backend '{name}' is unavailable on this host: no {DEVICES[name]}")):
        resolve_backend(name)


@pytest.mark.parametrize("name", ["sycl", "metal"])
def test_the_one_shot_solution_passes_the_backends_marker_scan(name: str) -> None:
    tree = ast.parse(prompts.oneshot(name)[1])

    assert get_backend(name).marker_hits(tree, _resolve(tree)) == []


@pytest.mark.parametrize(("name", "source"), [
    ("sycl", "import torch\n"),
    ("metal", "import torch\n\nlib = torch.mps.compile_shader\n"),
])
def test_a_candidate_that_builds_no_kernel_is_a_marker_hit(name: str, source: str) -> None:
    tree = ast.parse(source)

    assert [h.message for h in get_backend(name).marker_hits(tree, _resolve(tree))] == ["no call builds a kernel"]


def test_half_in_a_metal_shader_is_a_float16_use() -> None:
    source = 'import torch\n\nlib = torch.mps.compile_shader("kernel void k(device half* y) {}")\nprint(lib)\n'
    tree = ast.parse(source)

    assert [(h.line, h.kind) for h in get_backend("metal").precision_hits(tree, _resolve(tree))] == [(3, "fp16")]
