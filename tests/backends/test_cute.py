"""The CuTe DSL backend: its scans, symbol ownership and probe anywhere; its candidates verified and profiled where
the DSL, a CUDA GPU and the backend's registration are all present."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import torch
from mcp import Client
from mcp_support import ok

from kfoundry import examples, prompts
from kfoundry.backends import REGISTRY
from kfoundry.backends import cute as cute_backend
from kfoundry.backends.cute import CuteBackend
from kfoundry.schema import Bottleneck

_EXAMPLES = Path(examples.__file__).resolve().parent
needs_gpu_dsl = pytest.mark.skipif(
    importlib.util.find_spec("cutlass") is None or not torch.cuda.is_available() or "cute" not in REGISTRY,
    reason="needs nvidia-cutlass-dsl (pip install 'kernel-foundry[cute]'), a CUDA GPU, and 'cute' in kfoundry.backends.REGISTRY",
)


def _resolve(tree: ast.Module):  # noqa: ANN202 - the scans' own resolver, built the way ast_rules builds it
    from kfoundry.verify.ast_rules import _Scan

    scan = _Scan()
    scan.visit(tree)
    return scan.root


def _hits(kind: str, source: str) -> list[tuple[int, str, str]]:
    tree = ast.parse(source)
    backend = CuteBackend()
    found = backend.marker_hits(tree, _resolve(tree)) if kind == "marker" else backend.precision_hits(tree, _resolve(tree))
    return [(h.line, h.kind, h.message) for h in found]


def _example(problem: str) -> str:
    return (_EXAMPLES / problem / "cute.py").read_text(encoding="utf-8")


_KERNEL = '''import cutlass
import cutlass.cute as cute


@cute.kernel
def scale_kernel(gX: cute.Tensor, gY: cute.Tensor):
    tidx, _, _ = cute.arch.thread_idx()
    gY[tidx] = gX[tidx] * 2.0
'''

_HOST = '''

@cute.jit
def scale(mX: cute.Tensor, mY: cute.Tensor):
    scale_kernel(mX, mY).launch(grid=[1, 1, 1], block=[32, 1, 1])
'''


# -- marker --------------------------------------------------------------------------------------------


def test_the_marker_wants_a_cute_kernel() -> None:
    assert _hits("marker", "import torch\n") == [(0, "", "no function is decorated with @cute.kernel")]


def test_a_cute_kernel_that_is_never_launched_is_a_marker_hit_at_its_definition() -> None:
    [(line, _, message)] = _hits("marker", _KERNEL)

    assert line == 6 and "scale_kernel is defined but never launched" in message


def test_a_launch_outside_any_cute_jit_function_is_a_marker_hit() -> None:
    source = _KERNEL + "\nscale_kernel(1, 2).launch(grid=[1, 1, 1], block=[32, 1, 1])\n"

    [(_, _, message)] = _hits("marker", source)

    assert "no function is decorated with @cute.jit" in message


def test_a_cute_jit_host_function_nobody_compiles_or_calls_is_a_marker_hit() -> None:
    [(line, _, message)] = _hits("marker", _KERNEL + _HOST)

    assert line == 12 and "scale is defined but never compiled or called" in message
    assert _hits("marker", _KERNEL + _HOST + "\ncompiled = cute.compile(scale, 1, 2)\n") == []


def test_a_host_function_written_as_a_callable_objects_call_counts_when_the_object_is_used() -> None:
    source = _KERNEL + '''

class Scale:
    @cute.jit
    def __call__(self, mX: cute.Tensor, mY: cute.Tensor):
        scale_kernel(mX, mY).launch(grid=[1, 1, 1], block=[32, 1, 1])


compiled = cute.compile(Scale(), 1, 2)
'''

    assert _hits("marker", source) == []


@pytest.mark.parametrize("problem", ["elementwise", "matmul_epilogue"])
def test_the_bundled_cute_solutions_and_the_one_shot_satisfy_the_marker(problem: str) -> None:
    assert _hits("marker", _example(problem)) == []
    assert _hits("marker", prompts.oneshot(CuteBackend())[1]) == []


# -- precision ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["elementwise", "matmul_epilogue"])
def test_the_bundled_fp32_cute_solutions_have_no_precision_hit(problem: str) -> None:
    assert _hits("precision", _example(problem)) == []


def test_fastmath_on_a_cute_math_call_is_named_whether_literal_or_computed() -> None:
    source = _KERNEL + "    a = cute.math.exp(gX[0], fastmath=True)\n    b = cute.math.exp2(gX[0], fastmath=FAST)\n    c = cute.math.exp(gX[0], fastmath=False)\n"

    hits = _hits("precision", source)

    assert [(line, kind) for line, kind, _ in hits] == [(9, "fast_math"), (10, "fast_math")]
    assert "not a literal False" in hits[1][2]


def test_the_cute_arch_approximations_are_fast_math() -> None:
    source = _KERNEL + "    a = cute.arch.exp2(gX[0])\n    b = cute.arch.rcp_approx(gX[0])\n    c = cute.arch.thread_idx()\n"

    assert [(line, kind) for line, kind, _ in _hits("precision", source)] == [(9, "fast_math"), (10, "fast_math")]


def test_tf32_and_fp8_mma_atoms_are_named_but_the_fp32_fma_atom_is_not() -> None:
    source = ("import cutlass\nimport cutlass.cute as cute\n"
              "a = cute.nvgpu.warp.MmaTF32Op\nb = cute.nvgpu.warpgroup.MmaF8Op\nc = cute.nvgpu.MmaUniversalOp(cutlass.Float32)\n")

    assert [(line, kind) for line, kind, _ in _hits("precision", source)] == [(3, "tf32"), (4, "fp8")]


def test_only_the_cute_backend_knows_the_dsls_reduced_precision_dtypes() -> None:
    backend = CuteBackend()

    assert backend.precision_dtype("cutlass.Float16") == "fp16"
    assert backend.precision_dtype("cutlass.cute.BFloat16") == "bf16"
    assert backend.precision_dtype("cutlass.TFloat32") == "tf32"
    assert backend.precision_dtype("cutlass.Float8E4M3FN") == "fp8"
    assert backend.precision_dtype("cutlass.Float4E2M1FN") == "fp8"
    assert backend.precision_dtype("cutlass.Float32") is None
    assert backend.precision_dtype("cutlass.Float64") is None  # wider, not an 8/6/4-bit float
    assert backend.precision_dtype("torch.float16") is None  # torch's own spellings belong to the shared scan


# -- kernel ownership ----------------------------------------------------------------------------------


_SYMBOL = "kernel_cutlass_ampere_tensorptrf32gmemalign16o4096div4_tensorptrf32gmemalign16o4096div4_0"


def test_a_recorded_dsl_symbol_is_own_but_its_run_range_and_library_kernels_sharing_a_prefix_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cute_backend, "_symbols", cute_backend._symbol_forms(_SYMBOL))
    backend = CuteBackend()

    assert backend.is_own_kernel(_SYMBOL)
    assert backend.is_own_kernel(_SYMBOL.rsplit("_", 1)[0])  # the loader's name for a binary named after the kernel
    assert not backend.is_own_kernel("cute_dsl::scale")  # a range: the candidate's argument hooks run inside it
    assert not backend.is_own_kernel("ampere_sgemm_128x64_nn")  # cuBLAS, whatever the candidate named its kernel
    assert not backend.is_own_kernel("kernel_cutlass_ampere")
    assert not backend.is_own_kernel("void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_64x64_16x6_nn_align4>(Params)")
    assert not backend.is_own_kernel("void at::native::vectorized_elementwise_kernel<4>")


def test_a_kernel_renamed_out_of_the_dsls_naming_is_never_recorded() -> None:
    # set_name_prefix("ampere_sgemm_128x64_nn", remove_cutlass_symbol=True) would name a kernel after cuBLAS's
    assert cute_backend._symbol_forms("ampere_sgemm_128x64_nn_0") == set()
    assert cute_backend._symbol_forms(_SYMBOL) == {_SYMBOL, _SYMBOL.rsplit("_", 1)[0]}


def test_nothing_is_own_before_the_candidate_compiles_a_kernel() -> None:
    assert not CuteBackend().is_own_kernel("kernel_cutlass_swish_kernel_0")


def test_only_compilations_the_candidates_own_code_starts_are_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cute_backend, "_compiled", [])
    monkeypatch.setattr(cute_backend, "_own_ids", set())
    monkeypatch.setattr(cute_backend, "_symbols", set())

    class Compiled:
        function_name = "swish"
        kernel_info = {"kernel_cutlass_swish_kernel_0": {}}

    library, own, forged = Compiled(), Compiled(), Compiled()
    forged.kernel_info = {"kernel_cutlass_forged_0": {}}
    dsl: dict = {"__name__": "cutlass.base_dsl.jit_executor", "record": cute_backend._record}
    exec("def construct(compiled):\n    record(compiled)\n", dsl)  # noqa: S102 - the DSL building a compiled function
    exec("construct(library)", {"__name__": "torch._inductor.cutedsl", "construct": dsl["construct"], "library": library})  # noqa: S102
    exec("construct(own)", {"__name__": "candidate", "construct": dsl["construct"], "own": own})  # noqa: S102
    # constructed by the candidate itself, with kernel names of its choosing: no DSL frame in between
    exec("record(forged)", {"__name__": "candidate", "record": cute_backend._record, "forged": forged})  # noqa: S102

    assert [name for _, name in cute_backend._compiled] == ["swish"] and cute_backend._compiled[0][0] is own
    assert not CuteBackend().is_own_kernel("kernel_cutlass_forged_0")
    assert CuteBackend().is_own_kernel("kernel_cutlass_swish_kernel_0")
    [stats] = CuteBackend().built_kernels()
    assert stats.name == "kernel_cutlass_swish_kernel_0" and any("not yet run" in n for n in stats.notes)


# -- probe, environment, hints ------------------------------------------------------------------------


def test_the_probe_says_how_to_install_the_dsl_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cutlass" else real(name, *a))

    info = CuteBackend().probe()

    assert not info.available and "nvidia-cutlass-dsl is not installed" in info.reason and "kernel-foundry[cute]" in info.reason


def test_a_cutlass_module_that_is_not_the_dsl_is_not_taken_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.machinery import ModuleSpec
    from importlib.metadata import PackageNotFoundError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: ModuleSpec("cutlass", None) if name == "cutlass" else real(name, *a))

    def missing(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(cute_backend, "version", missing)

    info = CuteBackend().probe()

    assert not info.available and "not the CuTe DSL" in info.reason


def test_without_a_cuda_device_the_probe_says_the_dsl_needs_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.machinery import ModuleSpec

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: ModuleSpec("cutlass", None) if name == "cutlass" else real(name, *a))
    monkeypatch.setattr(cute_backend, "version", lambda name: "4.8.1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    info = CuteBackend().probe()

    assert not info.available and info.version == "4.8.1"
    assert "no CUDA device" in info.reason and "no CPU interpreter" in info.reason


def test_the_dsls_file_cache_goes_into_the_shared_cache_directory(tmp_path: Path) -> None:
    assert CuteBackend().cache_env(tmp_path) == {"CUTE_DSL_CACHE_DIR": str(tmp_path / "cute_dsl")}


def test_there_is_no_trusted_side_build_or_compile_only_mode_and_the_reasons_say_why() -> None:
    from kfoundry.backends.base import BuildRequest

    assert "cute.compile" in CuteBackend().build(BuildRequest(message={"op": "build_cute"})).reason
    outcome = CuteBackend().compile_only("import torch\n", timeout_s=10.0)
    assert not outcome.ok and "needs the device" in outcome.unsupported


@pytest.mark.parametrize(("source", "regime", "expected"), [
    ("k(x).launch(grid=[n, 1, 1], block=[64, 1, 1])", Bottleneck.memory, "at least 128 threads"),
    ("gX[i] = x", Bottleneck.memory, "cute.zipped_divide"),
    ("cute.zipped_divide(mX, (1, 4))", Bottleneck.memory, None),
    ("acc += a * b", Bottleneck.compute, "SmemAllocator"),
    ("smem.allocate_tensor(cutlass.Float32, layout)", Bottleneck.compute, "MmaF16BF16Op"),
])
def test_source_hints_come_from_what_the_cute_candidate_lacks(source: str, regime: Bottleneck, expected: str | None) -> None:
    hint = CuteBackend().source_hint(source, regime)

    assert hint is None if expected is None else expected in (hint or "")


# -- on a GPU, through the server ----------------------------------------------------------------------


@pytest.mark.gpu
@needs_gpu_dsl
def test_the_probe_reports_the_dsls_version_on_a_gpu_host() -> None:
    info = CuteBackend().probe()

    assert info.available and info.version and info.device == "cuda:0"


@pytest.mark.gpu
@needs_gpu_dsl
@pytest.mark.anyio
@pytest.mark.parametrize("problem", ["elementwise", "matmul_epilogue"])
async def test_the_bundled_cute_solutions_are_correct_and_report_their_dsl_kernels(client: Client, problem: str) -> None:
    arguments = {"backend": "cute", "reference": examples.source(problem, "reference"), "candidate": _example(problem), "trials": 2}

    data = await ok(client, "verify", arguments, within=300)

    assert data["state"] == "correct", (data.get("findings"), data.get("error"), data.get("mismatch"))
    assert [f for f in data["findings"] if f["blocking"]] == []
    assert data["kernels"] and all(k["name"].startswith("kernel_cutlass_") for k in data["kernels"]), data["kernels"]
    assert data["own_kernel_share"] > 0.5, data["own_kernel_share"]


@pytest.mark.gpu
@needs_gpu_dsl
@pytest.mark.anyio
async def test_a_cute_candidate_is_profiled_against_eager_with_its_kernel_counted_as_its_own(client: Client) -> None:
    arguments = {"backend": "cute", "reference": examples.source("elementwise", "reference"),
                 "candidate": _example("elementwise"), "baselines": ["eager"], "reps": 3, "warmup": 1, "trials": 1}

    data = await ok(client, "profile", arguments, within=300)

    assert data["state"] == "correct", (data.get("findings"), data.get("error"))
    assert data["candidate"]["n"] == 3 and data["eager"]["median_ms"] > 0
    own = [row for row in data["breakdown"] if row["own"]]
    assert own and all(row["name"].startswith(("kernel_cutlass_", "other (own)")) for row in own), data["breakdown"]
