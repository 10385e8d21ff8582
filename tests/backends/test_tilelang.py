"""The TileLang backend: its scans, kernel ownership and probe anywhere; its bundled candidates verified and profiled on a
GPU host where tilelang and nvcc are installed (TileLang has no interpreter, so there is no CPU run to test)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
from mcp import Client
from mcp_support import ok

from kfoundry.backends import REGISTRY
from kfoundry.backends import tilelang as tilelang_backend

BACKEND = tilelang_backend.TileLangBackend()
_EXAMPLES = Path(tilelang_backend.__file__).resolve().parent.parent / "examples"


def _example(problem: str, part: str) -> str:
    return (_EXAMPLES / problem / f"{part}.py").read_text(encoding="utf-8")


def _resolve(tree: ast.Module):  # noqa: ANN202 - the scans' own resolver, built the way ast_rules builds it
    from kfoundry.verify.ast_rules import _Scan

    scan = _Scan()
    scan.visit(tree)
    return scan.root


def _hits(kind: str, source: str) -> list[tuple[int, str, str]]:
    tree = ast.parse(source)
    backend = BACKEND
    found = backend.marker_hits(tree, _resolve(tree)) if kind == "marker" else backend.precision_hits(tree, _resolve(tree))
    return [(h.line, h.kind, h.message) for h in found]


_GEMM = '''import tilelang
import tilelang.language as T


@tilelang.jit(out_idx=[2]{settings})
def mm(m, n, k, dtype="{dtype}"):
    @T.prim_func
    def main(A: T.Tensor((m, k), dtype), B: T.Tensor((k, n), dtype), C: T.Tensor((m, n), "float32")):
        with T.Kernel(T.ceildiv(n, 64), T.ceildiv(m, 64), threads=128) as (bx, by):
            a = T.alloc_shared((64, 32), dtype)
            b = T.alloc_shared((32, 64), dtype)
            acc = T.alloc_fragment((64, 64), "float32")
            T.clear(acc)
            for ko in T.Pipelined(T.ceildiv(k, 32), num_stages=3):
                T.copy(A[by * 64, ko * 32], a)
                T.copy(B[ko * 32, bx * 64], b)
                T.gemm(a, b, acc)
            T.copy(acc, C[by * 64, bx * 64])

    return main


y = mm(128, 128, 128)
'''


def test_a_float32_t_gemm_is_a_tf32_hit_at_the_gemm_line() -> None:
    [(line, kind, message)] = _hits("precision", _GEMM.format(settings="", dtype="float32"))

    assert (line, kind) == (17, "tf32")
    assert "T.gemm" in message and "T.Parallel" in message


def test_a_float16_gemm_is_named_as_float16_and_not_also_as_tf32() -> None:
    hits = _hits("precision", _GEMM.format(settings="", dtype="float16"))

    assert [(line, kind) for line, kind, _ in hits] == [(6, "fp16")]


@pytest.mark.parametrize(("spelling", "kind"), [("T.float16", "fp16"), ("T.bfloat16", "bf16"), ("T.float8_e4m3", "fp8"),
                                                ("tilelang.language.bfloat16", "bf16")])
def test_tilelang_dtype_attributes_are_reduced_precision(spelling: str, kind: str) -> None:
    resolved = spelling.replace("T.", "tilelang.language.")

    assert BACKEND.precision_dtype(resolved) == kind
    assert BACKEND.precision_dtype("tilelang.language.float32") is None
    assert BACKEND.precision_dtype("tilelang.language.float64") is None  # wider, not an 8/6/4-bit float


@pytest.mark.parametrize("settings", [', pass_configs={"tl.enable_fast_math": True}',
                                      ", pass_configs={tilelang.PassConfigKey.TL_ENABLE_FAST_MATH: True}",
                                      ', compile_flags=["--use_fast_math"]', ", pass_configs=CONFIGS", ", **OPTIONS"])
def test_fast_math_settings_and_settings_a_scan_cannot_read_are_named(settings: str) -> None:
    hits = _hits("precision", _GEMM.format(settings=settings, dtype="float16"))

    assert "fast_math" in [kind for _, kind, _ in hits]


def test_fast_math_turned_off_literally_is_not_a_hit() -> None:
    hits = _hits("precision", _GEMM.format(settings=', pass_configs={"tl.enable_fast_math": False}', dtype="float16"))

    assert [kind for _, kind, _ in hits] == ["fp16"]


def test_tilelangs_approximate_intrinsics_are_fast_math() -> None:
    source = "import tilelang.language as T\n\n\ndef f(x):\n    return T.__exp(x)\n"

    assert [(line, kind) for line, kind, _ in _hits("precision", source)] == [(5, "fast_math")]


def test_dtype_strings_count_only_in_a_candidate_that_uses_tilelang() -> None:
    assert _hits("precision", 'import torch\nDTYPE = "float16"\n') == []
    assert [kind for _, kind, _ in _hits("precision", 'import tilelang\nDTYPE = "bfloat16"\n')] == ["bf16"]


def test_the_bundled_fp32_solutions_have_no_precision_hit() -> None:
    assert _hits("precision", _example("elementwise", "tilelang")) == []
    assert _hits("precision", _example("matmul_epilogue", "tilelang")) == []


def test_the_marker_wants_a_tilelang_jit_function_that_forward_calls() -> None:
    assert _hits("marker", "import torch\n") == [(0, "", "no function is decorated with @tilelang.jit")]
    unused = _GEMM.format(settings="", dtype="float32").replace("y = mm(128, 128, 128)\n", "")
    [(line, _, message)] = _hits("marker", unused)
    assert line == 6 and "defined but never called" in message
    assert _hits("marker", _GEMM.format(settings="", dtype="float32")) == []
    assert _hits("marker", _example("elementwise", "tilelang")) == []
    assert _hits("marker", _example("matmul_epilogue", "tilelang")) == []


def test_only_the_exact_symbols_of_kernels_the_candidate_called_count_as_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tilelang_backend, "_symbols", set())
    backend = BACKEND
    source = ('extern "C" __global__ void ampere_kernel(float* A);\n'
              'extern "C" __global__ void __launch_bounds__(256, 1) ampere_kernel(float* A) {}\n'
              'extern "C" __global__ void ampere_kernel_1(float* A) {}\n'
              '/* pasted by T.import_source: */ __global__ void ampere_sgemm_128x64_nn(float* A) {}\n')

    assert tilelang_backend._record_kernel_source(source, "ampere") == ["ampere_kernel", "ampere_kernel_1"]

    assert backend.is_own_kernel("ampere_kernel") and backend.is_own_kernel("ampere_kernel_1")
    # a range anyone can open, around a call that runs the kernel object's replaceable torch_function
    assert not backend.is_own_kernel("tilelang::main")
    # cuBLAS's kernels share the prefix; a prefix match would claim them.
    assert not backend.is_own_kernel("ampere_kernel_sgemm_128x64_nn")
    assert not backend.is_own_kernel("ampere_sgemm_128x64_nn")
    assert not backend.is_own_kernel("void at::native::vectorized_elementwise_kernel<4>")


def test_workers_keep_tilelangs_cache_in_the_shared_directory_and_compile_quietly(tmp_path: Path) -> None:
    backend = BACKEND

    assert backend.cache_env(tmp_path) == {"TILELANG_CACHE_DIR": str(tmp_path / "tilelang"), "TILELANG_TMP_DIR": str(tmp_path / "tilelang" / "tmp")}
    assert backend.worker_env("cuda:0") == {"TILELANG_PRINT_ON_COMPILATION": "0"}


def test_the_probe_says_how_to_install_tilelang_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tilelang" else real(name, *a))

    info = BACKEND.probe()

    assert not info.available and "tilelang not installed" in info.reason and "kernel-foundry[tilelang]" in info.reason


def test_the_probe_says_tilelang_needs_a_cuda_device_and_never_claims_an_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "tilelang" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    info = BACKEND.probe()

    assert not info.available and not info.interpreted and info.reason.startswith("no CUDA device") and "no interpreter" in info.reason


def test_the_probe_says_when_nvcc_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "tilelang" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_HOME", "/nonexistent-cuda")

    info = BACKEND.probe()

    assert not info.available and info.reason.startswith("no nvcc")


def test_compile_only_and_trusted_builds_are_refused_with_the_reason() -> None:
    from kfoundry.backends.base import BuildRequest

    backend = BACKEND

    assert "needs a GPU" in backend.compile_only("import tilelang\n", timeout_s=5).unsupported
    assert not backend.build(BuildRequest(message={"op": "load_cuda"})).ok


def test_the_bundled_solutions_lower_to_cuda_main_kernels_without_a_gpu() -> None:
    pytest.importorskip("tilelang", reason="tilelang is not installed (pip install 'kernel-foundry[tilelang]')")
    import tvm
    from tilelang.engine.lower import lower

    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    cases = [("elementwise", "swish_scale", (131072, 1.75)), ("matmul_epilogue", "linear_relu", (128, 256, 256))]
    for problem, factory, args in cases:
        spec = importlib.util.spec_from_file_location(f"_kf_tilelang_{problem}", _EXAMPLES / problem / "tilelang.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        prim_func = getattr(module, factory).get_tir(*args)
        with target:
            artifact = lower(prim_func, target=target, enable_device_compile=False)
        assert tilelang_backend.kernel_symbols(artifact.kernel_source) == ["main_kernel"], problem
        # what a worker records for the kernel object it is called through: its prim_func's name, then that name's kernels
        name = tilelang_backend._kernel_name(SimpleNamespace(prim_func=prim_func))
        assert name == "main" and tilelang_backend._record_kernel_source(artifact.kernel_source, name) == ["main_kernel"], problem


# -- through the server, on a GPU ----------------------------------------------------------------------


# Workers look the backend up in their own process, so the server tests need it registered in kfoundry.backends.
needs_gpu_tilelang = pytest.mark.skipif("tilelang" not in REGISTRY or importlib.util.find_spec("tilelang") is None or not BACKEND.probe().available,
                                        reason="needs the tilelang backend registered, tilelang, nvcc and a CUDA device")


@pytest.mark.gpu
@needs_gpu_tilelang
@pytest.mark.anyio
@pytest.mark.parametrize("problem", ["elementwise", "matmul_epilogue"])
async def test_the_bundled_tilelang_solutions_are_correct_at_gpu_size_and_report_their_kernel(client: Client, problem: str) -> None:
    arguments = {"backend": "tilelang", "reference": _example(problem, "reference_gpu"), "candidate": _example(problem, "tilelang"), "trials": 2}

    data = await ok(client, "verify", arguments, within=400)

    assert data["state"] == "correct", (data.get("findings"), data.get("error"), data.get("mismatch"))
    assert [f for f in data["findings"] if f["blocking"]] == []
    assert "main_kernel" in [k["name"] for k in data["kernels"]], data["kernels"]
    assert data["own_kernel_share"] > 0.5, data["own_kernel_share"]


@pytest.mark.gpu
@needs_gpu_tilelang
@pytest.mark.anyio
async def test_a_tilelang_candidate_is_profiled_against_eager_with_its_kernel_owned(client: Client) -> None:
    arguments = {"backend": "tilelang", "reference": _example("elementwise", "reference_gpu"),
                 "candidate": _example("elementwise", "tilelang"), "baselines": ["eager"], "reps": 5, "warmup": 1, "trials": 1}

    data = await ok(client, "profile", arguments, within=400)

    assert data["state"] == "correct", (data.get("findings"), data.get("error"))
    assert data["candidate"]["n"] == 5 and data["eager"]["median_ms"] > 0
    own = [row for row in data["breakdown"] if row["own"]]
    assert any(row["name"] == "main_kernel" for row in own), data["breakdown"]
