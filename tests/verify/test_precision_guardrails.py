"""The static guardrails follow the declared precision policy: reduced precision is a finding only where the policy forbids it."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent, indent

import pytest
from pydantic import ValidationError

from kfoundry import examples
from kfoundry.backends import get_backend
from kfoundry.verify import ast_rules
from kfoundry.verify.guardrails import RUNTIME_RULES, Guardrails, check, effective
from kfoundry.verify.precision import POLICIES

_CPP_KERNEL = '''\
import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
extern "C" void scale(const float* x, float* y, long n, float s) {
    for (long i = 0; i < n; ++i) y[i] = x[i] * s;
}
"""{flags})
'''

_CUDA_KERNEL = '''\
import torch
import torch.nn as nn

from kfoundry.backends.cuda import load_cuda

_mod = load_cuda(r"""
{body}
""", name="k"{options})
'''

_TRITON_KERNEL = '''\
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _kernel(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + offs[:, None] * BLOCK + offs[None, :])
    b = tl.load(b_ptr + offs[:, None] * BLOCK + offs[None, :])
{body}
    tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], c)
'''

_MODEL = '''

class ModelNew(nn.Module):
    def forward(self, x):
{forward}
'''


def _model(forward: str) -> str:
    return _MODEL.format(forward=indent(dedent(forward).strip(), " " * 8))


def _cpp(forward: str = "y = torch.empty_like(x)\n_lib.scale(x, y, x.numel(), 2.0)\nreturn y", flags: str = "", extra: str = "") -> str:
    return _CPP_KERNEL.replace("{flags}", flags) + dedent(extra) + _model(forward)


def _cuda(body: str = 'extern "C" __global__ void k(const float* x, float* y) { y[0] = x[0]; }', options: str = "") -> str:
    return _CUDA_KERNEL.format(body=dedent(body).strip(), options=options) + _model("y = torch.empty_like(x)\n_mod.k(1, 1, x, y)\nreturn y")


def _triton(body: str) -> str:
    launch = "c = torch.empty_like(x)\n_kernel[(1,)](x, x, c, BLOCK=16)\nreturn c"
    return _TRITON_KERNEL.format(body=indent(dedent(body).strip(), " " * 4)) + _model(launch)


def _downcasts(source: str, backend: str, precision: str | None = None, rules: Guardrails | None = None) -> list:
    return [f for f in check(source, get_backend(backend), rules or Guardrails(), precision) if f.code == "precision_downcast"]


def _line_of(source: str, text: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if text in line)


# -- strict (the default) ---------------------------------------------------------------------------


def test_bf16_cast_is_an_early_warning_under_strict_and_allowed_under_bf16() -> None:
    source = _cpp("y = torch.empty_like(x)\n_lib.scale(x, y, x.numel(), 2.0)\nreturn y.to(torch.bfloat16).float()")

    strict = _downcasts(source, "cpp")
    relaxed = _downcasts(source, "cpp", "bf16")

    # The numbers decide (verify.compare.compare_strict); the static hit warns before anything runs.
    assert len(strict) == 1 and not strict[0].blocking
    line = _line_of(source, ".to(torch.bfloat16)")
    assert strict[0].message == (f"candidate.py:{line}: converts to bfloat16 (.to(torch.bfloat16)) but precision policy 'strict' "
                                 "allows no reduced precision; pass precision='bf16' if that is intended")
    assert relaxed == []


def test_check_without_a_precision_argument_means_strict() -> None:
    source = _cpp("return x.half().float()")

    assert check(source, get_backend("cpp"), Guardrails()) == check(source, get_backend("cpp"), Guardrails(), "strict")
    assert _downcasts(source, "cpp")


@pytest.mark.parametrize("forward", [
    "return x.half().float()",
    "return x.to(torch.float16).float()",
    "return x.to(dtype=torch.half).float()",
    "return torch.empty(x.shape, dtype=torch.float16).float()",
    "with torch.autocast('cuda'):\n    return x @ x",
    "with torch.cuda.amp.autocast():\n    return x @ x",
])
def test_float16_in_python_is_flagged_under_strict_and_allowed_under_fp16(forward: str) -> None:
    source = _cpp(forward)

    found = _downcasts(source, "cpp")

    assert found and all("float16" in f.message for f in found)
    assert _downcasts(source, "cpp", "fp16") == []


def test_float8_is_flagged_even_under_bf16_as_below_the_declared_precision() -> None:
    source = _cpp("return x.to(torch.float8_e4m3fn).float()")

    found = _downcasts(source, "cpp", "bf16")

    assert len(found) == 1
    assert "below the declared precision 'bf16'" in found[0].message and "float8" in found[0].message


def test_triton_bfloat16_is_flagged_under_strict_and_tf32_and_allowed_under_bf16() -> None:
    source = _triton('c = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), input_precision="ieee")')

    assert [f.message for f in _downcasts(source, "triton")] == [
        f"candidate.py:{_line_of(source, 'tl.bfloat16')}: converts to bfloat16 (.to(tl.bfloat16)) but precision policy 'strict' "
        "allows no reduced precision; pass precision='bf16' if that is intended"]
    assert len(_downcasts(source, "triton", "tf32")) == 1
    assert _downcasts(source, "triton", "bf16") == []


@pytest.mark.parametrize(("body", "kind"), [
    ("c = a.to(tl.float16) * b", "float16"),
    ("c = (a * b).to(tl.float8e4nv).to(tl.float32)", "float8"),
    ("c = (a * b).to(tl.float8e5).to(tl.float32)", "float8"),
])
def test_triton_narrow_types_are_flagged_under_strict(body: str, kind: str) -> None:
    found = _downcasts(_triton(body), "triton")

    assert len(found) == 1 and kind in found[0].message


def test_tl_dot_without_ieee_precision_is_flagged_as_tf32_under_strict_and_allowed_under_tf32() -> None:
    source = _triton("c = tl.dot(a, b)")

    found = _downcasts(source, "triton")

    assert len(found) == 1
    assert 'input_precision="ieee"' in found[0].message and "TF32" in found[0].message
    assert f"candidate.py:{_line_of(source, 'tl.dot')}:" in found[0].message
    assert _downcasts(source, "triton", "tf32") == []


@pytest.mark.parametrize("call", [
    "tl.dot(a, b, allow_tf32=True)",
    'tl.dot(a, b, input_precision="tf32")',
    'tl.dot(a, b, input_precision="tf32x3")',
    "tl.dot(a, b, None, PRECISION)",
])
def test_tl_dot_asking_for_tf32_is_flagged_under_strict(call: str) -> None:
    assert len(_downcasts(_triton(f"c = {call}"), "triton")) == 1


@pytest.mark.parametrize("call", ['tl.dot(a, b, input_precision="ieee")', "tl.dot(a, b, allow_tf32=False)", 'tl.dot(a, b, None, "ieee")'])
def test_a_tl_dot_in_ieee_precision_passes_strict(call: str) -> None:
    assert _downcasts(_triton(f"c = {call}"), "triton") == []


@pytest.mark.parametrize(("body", "kind"), [
    ('extern "C" __global__ void k(const float* x, __half* y) { y[0] = __float2half(x[0]); }', "float16"),
    ('extern "C" __global__ void k(const float* x, float* y) { half2 v = __floats2half2_rn(x[0], x[1]); y[0] = __low2float(v); }', "float16"),
    ('extern "C" __global__ void k(const float* x, __nv_bfloat16* y) { y[0] = __float2bfloat16(x[0]); }', "bfloat16"),
    ('extern "C" __global__ void k(const float* x, float* y) { __nv_fp8_e4m3 v(x[0]); y[0] = float(v); }', "float8"),
    ('extern "C" __global__ void k(const float* x, float* y) { y[0] = __expf(x[0]); }', "fast-math"),
])
def test_reduced_precision_in_cuda_kernel_source_is_flagged_under_strict_at_its_kernel_line(body: str, kind: str) -> None:
    source = _cuda(body)

    found = _downcasts(source, "cuda")

    assert found and all(kind in f.message or "float16" in f.message for f in found)
    assert f"candidate.py:{_line_of(source, '__global__')}:" in found[0].message


@pytest.mark.parametrize(("backend", "source"), [
    ("cuda", _cuda(options=', options=["-O3", "--use_fast_math"]')),
    ("cuda", _cuda(options=', options=["-use_fast_math"]')),
    ("cuda", _cuda(options=', options=["--ftz=true", "--prec-div=false"]')),
    ("cpp", _cpp(flags=', extra_cflags=["-O3", "-ffast-math"]')),
    ("cpp", _cpp(flags=', extra_cflags=["-Ofast"]')),
])
def test_fast_math_flags_are_flagged_under_strict_and_allowed_under_relaxed_policies(backend: str, source: str) -> None:
    found = _downcasts(source, backend)

    assert found and "fast-math" in found[0].message and "pass precision='tf32'" in found[0].message
    for name in ("tf32", "fp16", "bf16"):
        assert _downcasts(source, backend, name) == []


def test_tensor_core_instructions_name_their_kinds() -> None:
    source = _cuda('''
        extern "C" __global__ void k(const float* x, float* y) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> a;
            asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0}, {%1}, {%2}, {%3};" : : );
            asm volatile("cvt.rn.bf16x2.f32 %0, %1, %2;" : : );
        }
    ''')

    kinds = {h.kind for h in ast_rules.scan(source, "cuda") if h.rule == "precision_downcast"}

    assert kinds == {"fp16", "tf32", "bf16"}


# -- what does not count ----------------------------------------------------------------------------


def test_words_in_comments_docstrings_and_dtype_checks_do_not_trigger_python_rules() -> None:
    source = _cpp(
        '''
        """Never calls .half() or .to(torch.bfloat16); no tl.float16 either."""
        # y = x.half()  -- we do not do that
        if x.dtype in (torch.float16, torch.bfloat16):
            raise TypeError("float32 only, not torch.float16")
        y = torch.empty_like(x)
        _lib.scale(x, y, x.numel(), 2.0)
        return y
        ''',
        extra='''
        """Module notes: tl.dot(a, b) defaults to TF32; x.to(torch.float16) would downcast."""
        ''',
    )

    assert _downcasts(source, "cpp") == []


def test_comments_and_half_named_variables_in_kernel_source_do_not_trigger() -> None:
    source = _cuda('''
        // __half and __float2half appear only in this comment; no --use_fast_math either
        /* __nv_bfloat16 */
        extern "C" __global__ void k(const float* x, float* y, int n) {
            int half = n / 2;
            y[0] = x[half] + expf(x[0]);
        }
    ''')

    assert _downcasts(source, "cuda") == []


def test_kernel_strings_are_only_searched_for_the_cpp_and_cuda_backends() -> None:
    source = _triton('c = tl.dot(a, b, input_precision="ieee")').replace(
        "import triton\n", 'import triton\nNOTE = "a CUDA port would use __half and --use_fast_math"\n')

    assert _downcasts(source, "triton") == []


def test_kernel_strings_are_searched_whenever_the_candidate_builds_a_cpp_or_cuda_kernel_whatever_its_backend() -> None:
    source = _triton('c = tl.dot(a, b, input_precision="ieee")').replace(
        "import triton\n", 'import triton\nfrom kfoundry.backends.cpp import load_cpp\n_lib = load_cpp(r"""void f(__half* y) {}""")\n')

    [found] = _downcasts(source, "triton")

    assert "__half" in found.message and f"candidate.py:{_line_of(source, '__half')}:" in found.message


def test_triton_precision_rules_apply_to_a_triton_kernel_inside_a_cpp_candidate() -> None:
    source = _cpp(extra="import triton\nimport triton.language as tl\n\n\n@triton.jit\ndef _k(a, b):\n    return tl.dot(a, b)\n")

    [found] = _downcasts(source, "cpp")

    assert 'input_precision="ieee"' in found.message and f"candidate.py:{_line_of(source, 'tl.dot')}:" in found.message


# -- policies -------------------------------------------------------------------------------------


def test_tf32_policy_allows_tl_dot_default_and_tf32_flags_but_flags_bf16() -> None:
    dot = _triton("c = tl.dot(a, b)")
    flags = _cpp(extra="torch.backends.cuda.matmul.allow_tf32 = True\ntorch.set_float32_matmul_precision('high')\n")
    bf16 = _cpp("return x.bfloat16().float()")

    assert _downcasts(dot, "triton", "tf32") == []
    assert [f for f in check(flags, get_backend("cpp"), Guardrails(), "tf32") if f.code == "precision_flags"] == []
    assert len(_downcasts(bf16, "cpp", "tf32")) == 1


def test_tf32_flags_are_rejected_under_strict_with_a_hint_and_other_numerics_flags_stay_blocked_under_every_policy() -> None:
    tf32 = _cpp(extra="torch.backends.cuda.matmul.allow_tf32 = True\n")
    others = _cpp(extra="torch.set_default_dtype(torch.float64)\ntorch.backends.cudnn.deterministic = True\n"
                        "torch.set_float32_matmul_precision('highest')\n")

    strict = [f for f in check(tf32, get_backend("cpp"), Guardrails()) if f.code == "precision_flags"]
    assert len(strict) == 1 and strict[0].blocking and "pass precision='tf32'" in strict[0].message
    for name in POLICIES:
        blocked = [f for f in check(others, get_backend("cpp"), Guardrails(), name) if f.code == "precision_flags"]
        assert len(blocked) == 3 and all(f.blocking for f in blocked), name


def test_bf16_policy_allows_bf16_fp16_tf32_and_fast_math_but_flags_fp8() -> None:
    allowed = _cpp(
        "with torch.autocast('cpu'):\n    y = x.half().bfloat16()\nreturn y.float()",
        flags=', extra_cflags=["-ffast-math"]',
    )
    dot = _triton("c = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))")
    fp8 = _triton("c = tl.dot(a.to(tl.float8e4nv), b.to(tl.float8e4nv))")

    assert _downcasts(allowed, "cpp") and _downcasts(allowed, "cpp", "bf16") == []
    assert _downcasts(dot, "triton", "bf16") == []
    [found] = _downcasts(fp8, "triton", "bf16")
    assert "below the declared precision 'bf16'" in found.message
    assert "no precision policy allows float8" in found.message


def test_fp16_policy_flags_bf16_as_below_the_declared_precision() -> None:
    source = _cuda('extern "C" __global__ void k(const float* x, __nv_bfloat16* y) { y[0] = __float2bfloat16(x[0]); }')

    found = _downcasts(source, "cuda", "fp16")

    assert found and all("below the declared precision 'fp16'" in f.message and "pass precision='bf16'" in f.message for f in found)


def test_a_policy_object_works_like_its_name_and_an_unknown_name_is_a_value_error() -> None:
    source = _cpp("return x.half().float()")

    assert _downcasts(source, "cpp", POLICIES["fp16"]) == []  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown precision policy"):
        check(source, get_backend("cpp"), Guardrails(), "fp4")


def test_precision_downcast_warns_by_default_and_can_be_raised_to_block_or_turned_off() -> None:
    source = _cpp("return x.half().float()")

    default = _downcasts(source, "cpp")
    warned = _downcasts(source, "cpp", rules=Guardrails(rules={"precision_downcast": "warn"}))
    blocked = _downcasts(source, "cpp", rules=Guardrails(rules={"precision_downcast": "block"}))
    off = _downcasts(source, "cpp", rules=Guardrails(rules={"precision_downcast": "off"}))

    assert default and not default[0].blocking and warned == default
    assert blocked and blocked[0].blocking and blocked[0].message == default[0].message
    assert off == []


def test_hits_carry_their_kind() -> None:
    source = _cpp("with torch.autocast('cpu'):\n    return x.half().to(torch.float8_e5m2).float()")

    kinds = {h.kind for h in ast_rules.scan(source, "cpp") or [] if h.rule == "precision_downcast"}

    assert kinds == {"bf16", "fp16", "fp8"}


@pytest.mark.parametrize(("name", "backend"), [(p.name, b) for p in examples.problems() for b in p.solutions])
def test_bundled_solutions_pass_the_strict_guardrails(name: str, backend: str) -> None:
    assert check(examples.source(name, backend), get_backend(backend), Guardrails()) == []


# -- configuration ----------------------------------------------------------------------------------


def test_runtime_rules_include_kernel_coverage_and_timed_output() -> None:
    assert RUNTIME_RULES["kernel_coverage"] == RUNTIME_RULES["timed_output"] == "block"
    assert Guardrails(rules={"kernel_coverage": "warn"}).severity("kernel_coverage") == "warn"


def test_min_own_kernel_share_defaults_to_half_and_is_a_fraction() -> None:
    assert Guardrails().min_own_kernel_share == 0.5
    with pytest.raises(ValidationError):
        Guardrails(min_own_kernel_share=1.5)


def test_min_own_kernel_share_comes_from_the_config_file_and_arguments_override_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "guardrails.json"
    config.write_text(json.dumps({"min_own_kernel_share": 0.8, "backends": {"cuda": {"min_own_kernel_share": 0.9}}}))
    monkeypatch.setenv("KFOUNDRY_GUARDRAILS", str(config))

    assert effective(None, "cpp").min_own_kernel_share == 0.8
    assert effective(None, "cuda").min_own_kernel_share == 0.9
    assert effective(Guardrails(min_own_kernel_share=0.25), "cuda").min_own_kernel_share == 0.25
    assert effective(Guardrails(banned=["x"]), "cuda").min_own_kernel_share == 0.9
