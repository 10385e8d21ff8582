"""Prompt templates render the context they are given, refuse to render without it, and ship correct one-shots."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2
import pydantic
import pytest
import torch

from kfoundry import examples, prompts
from kfoundry.schema import (
    Finding,
    MismatchDetail,
    OpInfo,
    ProblemAnalysis,
    Sample,
    State,
    VerifyResult,
)

_counter = itertools.count()


def _context(template: str, backend: str = "triton") -> dict[str, Any]:
    reference, solution = prompts.oneshot(backend)
    everything: dict[str, Any] = {
        "reference": examples.source("layernorm"),
        "backend": backend,
        "marker": "a @triton.jit kernel launched from forward",
        "notes": "Launch with a grid; tl.dot defaults to TF32 on NVIDIA GPUs.",
        "oneshot_reference": reference,
        "oneshot_solution": solution,
        "candidate": examples.source("layernorm", backend),
        "state": State.mismatch,
        "digest": "candidate 0.210 ms vs eager 0.180 ms; one kernel, 41% of DRAM peak",
        "recommendation": "Process several rows per program to raise occupancy.",
        "source_backend": "cpp",
        "source_candidate": examples.source("layernorm", "cpp"),
    }
    return {key: everything[key] for key in prompts.REQUIRED[template]}


def _analysis() -> ProblemAnalysis:
    return ProblemAnalysis(
        ops=[OpInfo(op="aten.native_layer_norm", count=1, input_shapes=[[16, 32, 512]], dtypes=["float32"], flops=2.6e6)],
        input_shapes=[[16, 32, 512]],
        input_dtypes=["float32"],
        output_shapes=[[16, 32, 512]],
        output_dtypes=["float32"],
        parameter_count=1024,
        flops=2.6e6,
        bytes=2.1e6,
        arithmetic_intensity=1.24,
        sol_ms={"NVIDIA H100 80GB HBM3": 0.000627},
    )


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_kf_oneshot_{next(_counter)}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("template", prompts.TEMPLATES)
def test_template_renders_reference_and_one_shot_from_required_context_alone(template: str) -> None:
    context = _context(template)

    text = prompts.render(template, **context)

    assert context["reference"].rstrip() in text
    assert context["oneshot_reference"].rstrip() in text
    assert context["oneshot_solution"].rstrip() in text
    assert "class ModelNew(nn.Module)" in text
    assert "## Output contract" in text


@pytest.mark.parametrize(
    ("template", "missing"),
    [(t, name) for t in prompts.TEMPLATES for name in prompts.REQUIRED[t]],
)
def test_template_raises_undefined_error_when_a_required_variable_is_missing(template: str, missing: str) -> None:
    context = _context(template)
    del context[missing]

    with pytest.raises(jinja2.UndefinedError, match=missing):
        prompts.render(template, **context)


@pytest.mark.parametrize("template", prompts.TEMPLATES)
def test_template_renders_the_shared_optional_context(template: str) -> None:
    text = prompts.render(
        template,
        **_context(template),
        device="NVIDIA H100 80GB HBM3",
        atol=1e-4,
        rtol=1e-4,
        guardrails=["no torch.nn.functional in forward"],
        extra="Keep BLOCK at most 1024.",
    )

    assert "Target device: NVIDIA H100 80GB HBM3." in text
    assert "atol=0.0001, rtol=0.0001" in text
    assert "- no torch.nn.functional in forward" in text
    assert text.rstrip().endswith("Keep BLOCK at most 1024.")


def test_unknown_template_raises_key_error_listing_the_templates() -> None:
    with pytest.raises(KeyError, match="generate, fix, optimize, translate"):
        prompts.render("summarise", reference="")


def test_template_name_may_carry_the_j2_suffix() -> None:
    assert prompts.render("generate.j2", **_context("generate")) == prompts.render("generate", **_context("generate"))


def test_generate_renders_the_analysis_table_and_speed_of_light() -> None:
    text = prompts.render("generate", **_context("generate"), analysis=_analysis())

    assert "| aten.native_layer_norm | 1 | (16, 32, 512) | float32 |" in text
    assert "| NVIDIA H100 80GB HBM3 | 0.000627 |" in text
    assert "Parameters: 1,024 elements" in text
    assert "memory-bound" in text


def test_generate_accepts_the_analysis_as_a_plain_dict() -> None:
    from_model = prompts.render("generate", **_context("generate"), analysis=_analysis())
    from_dict = prompts.render("generate", **_context("generate"), analysis=_analysis().model_dump())

    assert from_dict == from_model


def test_fix_renders_the_mismatch_detail_findings_and_triage_hint_of_a_verify_result() -> None:
    result = VerifyResult(
        state=State.mismatch,
        backend="triton",
        trials=5,
        duration_s=1.5,
        run_id="run-1",
        atol=1e-4,
        rtol=1e-4,
        mismatch=MismatchDetail(
            reason="values",
            message="13 of 262144 elements differ",
            max_abs_error=0.73,
            max_rel_error=4.1,
            bad_fraction=5e-5,
            first_bad_index=[15, 31, 511],
            samples=[Sample(index=[15, 31, 511], expected=0.25, got=0.98)],
            atol=1e-4,
            rtol=1e-4,
        ),
        findings=[Finding(code="input_mutated", message="input 0 changed during forward")],
    )
    context = {k: v for k, v in _context("fix").items() if k != "state"}

    text = prompts.render("fix", **context, **prompts.failure_context(result))

    assert "## What happened: `mismatch`" in text
    assert "State.mismatch" not in text
    assert "max abs error 0.73, max rel error 4.1 (atol=0.0001, rtol=0.0001)" in text
    assert "| (15, 31, 511) | 0.25 | 0.98 |" in text
    assert "- [blocking] input_mutated: input 0 changed during forward" in text
    assert "Few elements are wrong" in text
    assert "atol=0.0001, rtol=0.0001" in text.split("## Output contract")[1]


def test_fix_renders_the_error_type_message_and_traceback_tail() -> None:
    frames = "\n".join(f'  File "candidate.py", line {i}, in forward' for i in range(100))
    error = {"type": "IndexError", "message": "index 512 is out of bounds", "traceback_tail": frames, "stage": "trial 0"}

    text = prompts.render("fix", **{**_context("fix"), "state": "runtime_error"}, error=error)

    assert "Error during trial 0: `IndexError: index 512 is out of bounds`" in text
    assert "line 99, in forward" in text
    # Long tracebacks are cut to their last frames: the prompt must stay short.
    assert "line 10, in forward" not in text


def test_fix_renders_compiler_diagnostics_for_a_compilation_failure() -> None:
    text = prompts.render(
        "fix",
        **{**_context("fix", "cpp"), "state": "compilation_failure"},
        diagnostics=["kernel.cpp:12: error: expected ';' before '}' token"],
    )

    assert "kernel.cpp:12: error: expected ';' before '}' token" in text
    assert "Fix the first error first" in text


def test_fix_rejects_a_malformed_error_record() -> None:
    with pytest.raises(pydantic.ValidationError):
        prompts.render("fix", **_context("fix"), error={"message": "no type"})


def test_optimize_renders_digest_recommendation_evidence_and_history() -> None:
    text = prompts.render(
        "optimize",
        **_context("optimize"),
        bottleneck="memory",
        evidence=["41% of DRAM peak"],
        history=["iteration 2: BLOCK 2048, 0.93x"],
    )

    assert "candidate 0.210 ms vs eager 0.180 ms" in text
    assert "## Recommendation\nProcess several rows per program to raise occupancy." in text
    assert "Bottleneck: memory." in text
    assert "- 41% of DRAM peak" in text
    assert "- iteration 2: BLOCK 2048, 0.93x" in text


def test_translate_renders_the_source_candidate_and_both_backend_names() -> None:
    context = _context("translate")

    text = prompts.render("translate", **context)

    assert context["source_candidate"].rstrip() in text
    assert "Translate the working cpp candidate below into triton" in text


def test_code_containing_backtick_fences_gets_a_longer_fence() -> None:
    context = {**_context("generate"), "reference": 'DOC = """\n```python\nx\n```\n"""\n'}

    text = prompts.render("generate", **context)

    assert '````python\nDOC = """\n```python\nx\n```\n"""\n````' in text


def test_oneshot_returns_reference_and_solution_strings_for_each_backend() -> None:
    assert {"cpp", "triton"} <= set(prompts.oneshot_backends())
    for backend in prompts.oneshot_backends():
        reference, solution = prompts.oneshot(backend)
        assert "class Model(nn.Module)" in reference
        assert "class ModelNew(nn.Module)" in solution


def test_oneshot_for_an_unknown_backend_raises_key_error_listing_the_known_ones() -> None:
    with pytest.raises(KeyError, match="cpp, cuda, cute, helion, hip, metal, sycl, tilelang, triton"):
        prompts.oneshot("vulkan")


@pytest.mark.parametrize("backend", ["cpp", "triton", pytest.param("helion", marks=pytest.mark.skipif(
    importlib.util.find_spec("helion") is None, reason="helion is not installed (pip install 'kernel-foundry[helion]')"))])
def test_oneshot_solution_matches_its_reference(backend: str, tmp_path: Path) -> None:
    reference_src, solution_src = prompts.oneshot(backend)
    (tmp_path / "reference.py").write_text(reference_src, encoding="utf-8")
    (tmp_path / "solution.py").write_text(solution_src, encoding="utf-8")
    reference = _load(tmp_path / "reference.py")
    solution = _load(tmp_path / "solution.py")
    init = reference.get_init_inputs()
    torch.manual_seed(0)
    model = reference.Model(*init)
    torch.manual_seed(0)
    model_new = solution.ModelNew(*init)

    torch.manual_seed(42)
    # The tanh examples are scaled up so tanh saturates on part of the input: the large-|x| path must stay
    # finite. Helion's is a GEMM, whose rounding such inputs would only amplify.
    inputs = [t * (1 if backend == "helion" else 20) for t in reference.get_inputs()]
    with torch.no_grad():
        expected = model(*[t.clone() for t in inputs])
        got = model_new(*inputs)

    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
