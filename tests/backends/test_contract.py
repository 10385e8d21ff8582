"""Every registered backend answers the whole Backend protocol; what only one backend knows lives behind it."""

from __future__ import annotations

import ast
import uuid
from pathlib import Path

import pytest

from kfoundry.backends import all_backends, get_backend, names
from kfoundry.backends.base import Backend, BuildRequest, BuildUnsupported, CompileOnlyOutcome
from kfoundry.backends.cpp import CppBackend
from kfoundry.backends.cuda import CudaBuildOutcome
from kfoundry.backends.gxx import BuildOutcome
from kfoundry.schema import Bottleneck
from kfoundry.verify.guardrails import Guardrails


def _resolve(tree: ast.Module):  # noqa: ANN202 - the scans' own resolver, built the way ast_rules builds it
    from kfoundry.verify.ast_rules import _Scan

    scan = _Scan()
    scan.visit(tree)
    return scan.root


def _marker(backend: str, source: str) -> list[str]:
    tree = ast.parse(source)
    return [f"{h.line}: {h.message}" for h in get_backend(backend).marker_hits(tree, _resolve(tree))]


@pytest.mark.parametrize("name", names())
def test_each_registered_backend_satisfies_the_protocol(name: str) -> None:
    backend = get_backend(name)

    assert isinstance(backend, Backend)
    assert backend.oneshot.is_file()
    assert all(level in ("block", "warn", "off") for level in backend.rule_defaults.values())


def test_all_backends_lists_every_registered_one_in_name_order() -> None:
    assert [b.name for b in all_backends()] == names()


# -- parent-side builds ------------------------------------------------------------------------------

CPP_SOURCE = 'extern "C" void f(float* y) {\n  y[0] = missing;\n}\n'


def test_a_cpp_build_request_reports_errors_at_the_candidate_lines_holding_the_source() -> None:
    source = CPP_SOURCE + f"// {uuid.uuid4().hex}\n"
    candidate = f'from kfoundry.backends.cpp import load_cpp\n\nlib = load_cpp(r"""{source}""")\n'

    outcome = get_backend("cpp").build(BuildRequest(message={"op": "build_cpp", "source": source, "flags": []}, candidate=candidate))

    assert isinstance(outcome, BuildOutcome) and not outcome.ok
    assert [(d.file, d.line) for d in outcome.diagnostics if d.severity == "error"] == [("candidate.py", 4)]


def test_a_cpp_build_request_for_source_the_candidate_does_not_hold_points_at_kernel_cpp() -> None:
    outcome = get_backend("cpp").build(BuildRequest(message={"op": "build_cpp", "source": CPP_SOURCE}, candidate="import torch\n"))

    assert not outcome.ok and {d.file for d in outcome.diagnostics if d.severity == "error"} == {"kernel.cpp"}


def test_a_cpp_build_request_with_a_forbidden_flag_is_a_failed_outcome_not_an_exception() -> None:
    outcome = get_backend("cpp").build(BuildRequest(message={"op": "build_cpp", "source": CPP_SOURCE, "flags": ["-I/etc"]}))

    assert not outcome.ok and "'-I/etc' is not allowed" in outcome.diagnostics[0].message


def test_a_malformed_cpp_build_request_is_a_failed_outcome_not_an_exception() -> None:
    outcome = get_backend("cpp").build(BuildRequest(message={"op": "build_cpp", "source": CPP_SOURCE, "flags": "-O3"}))

    assert not outcome.ok and "'flags' (a list of strings)" in outcome.diagnostics[0].message


@pytest.mark.parametrize(("backend", "op"), [("cpp", "build_cuda"), ("cuda", "build_cpp")])
def test_a_backend_refuses_a_build_request_meant_for_another(backend: str, op: str) -> None:
    outcome = get_backend(backend).build(BuildRequest(message={"op": op, "source": CPP_SOURCE}))

    assert isinstance(outcome, BuildUnsupported) and not outcome.ok
    assert repr(op) in outcome.reason and outcome.diagnostics[0].message.startswith(f"the {backend} backend cannot perform this build")


def test_a_cuda_build_request_with_a_forbidden_option_is_refused_through_the_protocol() -> None:
    message = {"op": "build_cuda", "source": 'extern "C" __global__ void k() {}', "options": ["-I/etc"]}

    outcome = get_backend("cuda").build(BuildRequest(message=message))

    assert isinstance(outcome, CudaBuildOutcome) and not outcome.ok
    assert "'-I/etc' is not allowed" in outcome.diagnostics[0].message


def test_triton_has_no_trusted_side_build_and_says_why() -> None:
    outcome = get_backend("triton").build(BuildRequest(message={"op": "build_triton"}))

    assert isinstance(outcome, BuildUnsupported) and not outcome.ok
    assert "first launches" in outcome.reason


# -- compile-only -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cpp", "triton"])
def test_backends_that_always_have_their_device_or_compile_at_launch_have_no_compile_only_mode(name: str) -> None:
    outcome = get_backend(name).compile_only("import torch\n", timeout_s=10.0)

    assert isinstance(outcome, CompileOnlyOutcome) and not outcome.ok and outcome.unsupported
    assert outcome.diagnostics == [f"candidate.py: error: the {name} backend has no compile-only mode: {outcome.unsupported}"]


def test_a_compile_only_outcome_unpacks_as_kernels_diagnostics_ok() -> None:
    kernels, diagnostics, ok = CompileOnlyOutcome(ok=True, diagnostics=["candidate.py:3: warning: x"])

    assert (kernels, diagnostics, ok) == ([], ["candidate.py:3: warning: x"], True)


# -- worker environment and warm-up ---------------------------------------------------------------


def test_cache_env_points_each_backends_compiler_cache_into_the_shared_directory(tmp_path: Path) -> None:
    assert get_backend("triton").cache_env(tmp_path) == {"TRITON_CACHE_DIR": str(tmp_path / "triton")}
    for name in ("cpp", "cuda"):
        assert get_backend(name).cache_env(tmp_path) == {"TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions")}


def test_warming_the_triton_backend_imports_triton() -> None:
    import sys

    get_backend("triton").warm("cpu")

    assert "triton" in sys.modules


# -- static scans --------------------------------------------------------------------------------------


def test_a_cpp_library_bound_to_a_name_nobody_reads_is_a_marker_hit() -> None:
    source = "from kfoundry.backends.cpp import load_cpp as build\n\nlib = build('int x;')\n"

    assert _marker("cpp", source) == ["3: the kernel library built at line 3 (lib) is never used"]
    assert _marker("cpp", source + "print(lib)\n") == []


def test_load_inline_without_cuda_sources_builds_a_cpp_kernel_but_not_a_cuda_one() -> None:
    source = "from torch.utils.cpp_extension import load_inline\n\nmod = load_inline('m', cpp_sources='')\nmod.f()\n"

    assert _marker("cpp", source) == []
    assert _marker("cuda", source) == ["0: no call builds a kernel"]


def test_a_triton_kernel_defined_but_never_launched_is_a_marker_hit() -> None:
    source = "import triton\n\n\n@triton.jit\ndef k(x):\n    pass\n"

    assert _marker("triton", source) == ["5: the @triton.jit kernel k is defined but never launched"]
    assert _marker("triton", source + "\nk[(1,)](0)\n") == []
    assert _marker("triton", "import torch\n") == ["0: no function is decorated with @triton.jit"]


def test_only_triton_knows_triton_dtypes() -> None:
    assert get_backend("triton").precision_dtype("triton.language.bfloat16") == "bf16"
    assert get_backend("triton").precision_dtype("triton.language.float8e5") == "fp8"
    assert get_backend("triton").precision_dtype("triton.language.float32") is None
    assert get_backend("cpp").precision_dtype("triton.language.bfloat16") is None


@pytest.mark.parametrize(("name", "source", "regime", "expected"), [
    ("cpp", "for (int i = 0; i < n; ++i) y[i] = x[i];", Bottleneck.memory, "#pragma omp parallel for"),
    ("cpp", "#pragma omp parallel for\nfor (;;) {}", Bottleneck.memory, None),
    ("triton", "kernel[grid](x, y, n, BLOCK=64)", Bottleneck.memory, "from 64 to 1024"),
    ("triton", "acc += a * b", Bottleneck.compute, "tl.dot"),
    ("cuda", "y[i] = a * x[i];", Bottleneck.compute, "WMMA or mma.sync"),
    ("cuda", "wmma::mma_sync(c, a, b, c);", Bottleneck.compute, None),
])
def test_source_hints_come_from_what_the_candidate_lacks(name: str, source: str, regime: Bottleneck, expected: str | None) -> None:
    hint = get_backend(name).source_hint(source, regime)

    assert hint is None if expected is None else expected in (hint or "")


def test_a_backends_rule_defaults_apply_below_the_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CppBackend, "rule_defaults", {"low_level_os": "block"})

    assert Guardrails().severity("low_level_os", "cpp") == "block"
    assert Guardrails().severity("low_level_os", "triton") == "warn"
    assert Guardrails(rules={"low_level_os": "off"}).severity("low_level_os", "cpp") == "off"
