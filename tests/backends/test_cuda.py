"""The cuda backend: nvcc compile-only without a GPU, NVRTC builds, checked kernel launches, bundled examples."""

from __future__ import annotations

import importlib.util
import itertools
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest
import torch

from kfoundry import examples
from kfoundry.backends import cuda, cuda_driver, cuda_kernels, nvcc, nvrtc
from kfoundry.backends.base import Backend
from kfoundry.backends.cuda import (
    BuildError,
    CudaBackend,
    CudaKernel,
    build_cuda,
    build_cuda_request,
    compile_only,
    load_cuda,
)
from kfoundry.backends.nvcc import (
    KernelDecl,
    Param,
    find_kernels,
    parse_ptxas,
    short_name,
)

PROBLEMS = ["elementwise", "layernorm", "matmul_epilogue", "reduction", "rmsnorm_scale", "softmax"]
EXAMPLE_ROOT = Path(examples.__file__).resolve().parent
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc on PATH")


def _example_source(problem: str) -> str:
    return (EXAMPLE_ROOT / problem / "cuda.py").read_text(encoding="utf-8")


def _nvrtc_missing() -> str | None:
    try:
        cuda.nvrtc_facts()
    except cuda.CudaUnavailable as exc:
        return str(exc)
    return None


needs_nvrtc = pytest.mark.skipif(_nvrtc_missing() is not None, reason="needs NVRTC (libnvrtc from the nvidia wheels or a CUDA toolkit)")


def _line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


# -- compile-only (nvcc, no GPU) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled_examples() -> dict[str, tuple[list, list[str], bool]]:
    # Concurrently: the two load_inline examples parse torch's headers, tens of seconds each on two cores.
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = pool.map(lambda p: compile_only(_example_source(p)), PROBLEMS)
        return dict(zip(PROBLEMS, results, strict=True))


@needs_nvcc
@pytest.mark.parametrize("problem", PROBLEMS)
def test_compile_only_builds_each_example_and_reports_registers_for_every_kernel(problem: str, compiled_examples: dict) -> None:
    kernels, diagnostics, ok = compiled_examples[problem]
    source = _example_source(problem)
    declared = {d.name for d in find_kernels(source)}

    assert ok, diagnostics
    assert not [d for d in diagnostics if ": error:" in d]
    assert declared and {k.name for k in kernels} == declared
    for k in kernels:
        assert k.registers is not None and k.registers > 0
        assert k.spills_bytes == 0
        assert any("sm_90" in note for note in k.notes)


@needs_nvcc
def test_compile_only_reports_static_shared_memory_of_a_tiled_kernel(compiled_examples: dict) -> None:
    kernels, _, _ = compiled_examples["matmul_epilogue"]
    # two float[32][33] tiles
    assert [k.shared_memory_bytes for k in kernels] == [2 * 32 * 33 * 4]


CANDIDATE_WITH_ERROR = '''import torch
from kfoundry.backends.cuda import load_cuda

SOURCE = r"""
extern "C" __global__ void fill(float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = undefined_value;
}
"""

mod = load_cuda(SOURCE)
'''


@needs_nvcc
def test_an_error_in_a_load_cuda_source_is_reported_at_its_candidate_line() -> None:
    kernels, diagnostics, ok = compile_only(CANDIDATE_WITH_ERROR)

    line = _line_of(CANDIDATE_WITH_ERROR, "y[i] = undefined_value")
    assert not ok and kernels == []
    assert f'candidate.py:{line}: error: identifier "undefined_value" is undefined' in diagnostics


CANDIDATE_INLINE_ERROR = '''import torch
from torch.utils.cpp_extension import load_inline

cuda_src = """
__global__ void twice(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x
    if (i < n) y[i] = 2.0f * x[i];
}
torch::Tensor twice_op(torch::Tensor x) { auto y = torch::empty_like(x); return y; }
"""

ext = load_inline(name="twice", cpp_sources="torch::Tensor twice_op(torch::Tensor x);", cuda_sources=cuda_src, functions=["twice_op"])
'''


@needs_nvcc
def test_a_syntax_error_in_load_inline_cuda_sources_maps_past_the_prepended_headers_to_its_candidate_line() -> None:
    _, diagnostics, ok = compile_only(CANDIDATE_INLINE_ERROR)

    # nvcc reports a missing ';' on the line where the next statement starts
    line = _line_of(CANDIDATE_INLINE_ERROR, "if (i < n) y[i] = 2.0f")
    assert not ok
    assert any(d.startswith(f"candidate.py:{line}: error: expected a \";\"") for d in diagnostics), diagnostics


@needs_nvcc
def test_a_source_built_at_run_time_is_reported_as_unchecked_not_as_compiled() -> None:
    candidate = 'from kfoundry.backends.cuda import load_cuda\nN = 4\nmod = load_cuda(f"extern \\"C\\" __global__ void k(float* y) {{ y[0] = {N}; }}")\n'

    kernels, diagnostics, ok = compile_only(candidate)

    assert not ok and kernels == []
    assert any(d.startswith("candidate.py:3: warning:") and "built at run time" in d for d in diagnostics)


@needs_nvcc
def test_a_candidate_without_any_cuda_source_fails_with_a_hint() -> None:
    _, diagnostics, ok = compile_only("import torch\n\nclass ModelNew(torch.nn.Module):\n    pass\n")

    assert not ok
    assert any("no CUDA source found" in d and "load_cuda" in d for d in diagnostics)


@needs_nvcc
def test_a_python_syntax_error_is_located_without_running_nvcc() -> None:
    _, diagnostics, ok = compile_only("import torch\n\ndef broken(:\n    pass\n")

    assert not ok
    assert diagnostics == ["candidate.py:3: error: Python syntax error: invalid syntax"]


@needs_nvcc
def test_a_load_cuda_option_naming_a_path_fails_compile_only_as_it_would_fail_the_build() -> None:
    candidate = 'from kfoundry.backends.cuda import load_cuda\nmod = load_cuda(r"""extern "C" __global__ void k(float* y) { y[0] = 1; }""", options=["-I/etc"])\n'

    _, diagnostics, ok = compile_only(candidate)

    assert not ok
    assert any(d.startswith("candidate.py:2: error: load_cuda refuses options ['-I/etc']") for d in diagnostics)


@needs_nvcc
def test_the_backend_exposes_compile_only_with_the_same_result() -> None:
    outcome = CudaBackend().compile_only(_example_source("elementwise"), timeout_s=300.0)

    assert outcome.ok, outcome.diagnostics
    assert [k.name for k in outcome.kernels] == ["swish_scale"]
    assert outcome.unsupported == ""


def test_compile_only_without_nvcc_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvcc, "nvcc_path", lambda: None)

    kernels, diagnostics, ok = compile_only(_example_source("elementwise"))

    assert (kernels, ok) == ([], False)
    assert diagnostics == ["candidate.py: error: compile-only needs nvcc on PATH and this host has none"]


# -- ptxas output, names and signatures -----------------------------------------------------------

PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3cxxPfl' for 'sm_90'
ptxas info    : Function properties for _Z3cxxPfl
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers
ptxas info    : Compiling entry function 'tiled' for 'sm_90'
ptxas info    : Function properties for helper
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Function properties for tiled
    96 bytes stack frame, 40 bytes spill stores, 24 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 96 bytes cumulative stack size, 8448 bytes smem, 380 bytes cmem[0]
"""


def test_ptxas_output_gives_registers_spills_and_shared_memory_per_entry_function() -> None:
    kernels = {k.mangled: k for k in parse_ptxas(PTXAS_LOG)}

    assert set(kernels) == {"_Z3cxxPfl", "tiled"}  # 'helper' is not an entry function
    assert (kernels["_Z3cxxPfl"].registers, kernels["_Z3cxxPfl"].spill_stores, kernels["_Z3cxxPfl"].shared_bytes) == (8, 0, 0)
    tiled = kernels["tiled"]
    assert (tiled.registers, tiled.spill_stores, tiled.spill_loads, tiled.stack_bytes, tiled.shared_bytes) == (255, 40, 24, 96, 8448)
    assert tiled.arch == "sm_90"


@pytest.mark.skipif(shutil.which("c++filt") is None and shutil.which("cu++filt") is None, reason="needs c++filt")
def test_mangled_kernel_names_are_demangled_to_their_function_names() -> None:
    names = nvcc.demangle(["_Z12swish_kernelPKfPflf", "_Z2tkILi4EEvPf", "plain"])

    # c++filt writes "float const*", cu++filt "const float *"
    assert names["_Z12swish_kernelPKfPflf"].replace(" ", "") in ("swish_kernel(floatconst*,float*,long,float)", "swish_kernel(constfloat*,float*,long,float)")
    assert short_name(names["_Z12swish_kernelPKfPflf"]) == "swish_kernel"
    assert short_name(names["_Z2tkILi4EEvPf"]) == "tk<4>"
    assert names["plain"] == "plain"


SIGNATURES = r"""
#include <cstdint>
// __global__ void commented_out(float* x) {}
extern "C" __global__ void __launch_bounds__(256) scale(const float* __restrict__ x, float *y, int64_t n, float a) {}
extern "C" {
__global__ void inside_block(unsigned n, const double* const p, half h, long long m, float v[]) {}
}
namespace ops {
__global__ void namespaced(unsigned char* mask, size_t count) {}
}
template <int B> __global__ void templated(float* y) {}
__global__ void declared_only(float* y);
__global__ void no_args() {}
"""


def test_kernel_signatures_are_parsed_into_base_types_and_pointer_depth() -> None:
    kernels = {k.name: k for k in find_kernels(SIGNATURES)}

    assert set(kernels) == {"scale", "inside_block", "namespaced", "templated", "no_args"}
    assert kernels["scale"] == KernelDecl(
        "scale", [Param("float", 1), Param("float", 1), Param("int64_t", 0), Param("float", 0)], True, False, "scale", 4
    )
    assert kernels["inside_block"].params == [
        Param("unsigned int", 0), Param("double", 1), Param("__half", 0), Param("long long", 0), Param("float", 1)
    ]
    assert kernels["inside_block"].extern_c
    assert not kernels["namespaced"].extern_c and kernels["namespaced"].qualified == "ops::namespaced"
    assert kernels["namespaced"].params == [Param("unsigned char", 1), Param("size_t", 0)]
    assert kernels["templated"].template
    assert kernels["no_args"].params == []


def _unlaunched_kernel(source: str, name: str) -> CudaKernel:
    decl = next(d for d in find_kernels(source) if d.name == name)
    return CudaKernel(module=None, decl=decl, symbol=name)  # type: ignore[arg-type]


def test_kernel_arguments_are_checked_against_the_parsed_signature_before_any_launch() -> None:
    kernel = _unlaunched_kernel(SIGNATURES, "scale")

    with pytest.raises(TypeError, match="takes 4 kernel arguments"):
        kernel(1, 32, torch.zeros(4), torch.zeros(4), 4)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        kernel(1, 32, torch.zeros(4), torch.zeros(4), 4, 1.0)
    with pytest.raises(TypeError, match="int64_t; pass a Python int, not float"):
        kernel._argument(2, Param("int64_t", 0), 4.0, [])
    with pytest.raises(OverflowError, match="does not fit in int"):
        kernel._argument(0, Param("int", 0), 1 << 31, [])
    with pytest.raises(TypeError, match="pass a Python number, not a tensor"):
        kernel._argument(3, Param("float", 0), torch.tensor(1.0), [])
    with pytest.raises(ValueError, match="at most 1024 threads"):
        kernel(1, (64, 32), torch.zeros(4), torch.zeros(4), 4, 1.0)


def test_scalars_are_converted_to_their_c_types() -> None:
    kernel = _unlaunched_kernel(SIGNATURES, "inside_block")
    holders: list = []

    kernel._argument(0, Param("unsigned int", 0), 7, holders)
    kernel._argument(2, Param("__half", 0), 1.5, holders)
    kernel._argument(3, Param("long long", 0), -(1 << 40), holders)
    kernel._argument(1, Param("double", 1), None, holders)

    assert [type(h).__name__ for h in holders] == ["c_uint", "c_ushort", "c_long", "c_void_p"]
    assert holders[0].value == 7 and holders[1].value == 0x3E00 and holders[2].value == -(1 << 40) and not holders[3].value


def test_kernel_stats_take_registers_and_shared_memory_from_the_driver_when_a_device_is_present(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    image = tmp_path / "image.cubin"
    image.write_bytes(b"\x7fELF")
    ptxas = [{"mangled": "scale", "registers": 10, "spill_stores": 0, "shared_bytes": 0}]
    outcome = cuda.CudaBuildOutcome(ok=True, key="k", image=str(image), arch="sm_90", toolchain="NVRTC 13.0", seconds=0.25, ptxas=ptxas)
    module = cuda.CudaModule(outcome, SIGNATURES, "signatures")
    values = {cuda_driver._ATTR_REGS: 40, cuda_driver._ATTR_SHARED: 2048, cuda_driver._ATTR_LOCAL: 16, cuda_driver._ATTR_MAX_THREADS: 256}

    class FakeDriver:
        def attribute(self, fn: object, attr: int) -> int:
            return values[attr]

    monkeypatch.setattr(cuda_driver, "_driver", FakeDriver)  # where read_resources looks it up
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(CudaKernel, "function", lambda self, device: object())

    stats = {s.name: s for s in module.stats()}

    assert set(stats) == {"scale", "inside_block"}  # C++ kernels without a lowered name are not launchable
    scale = stats["scale"]
    assert (scale.registers, scale.shared_memory_bytes, scale.spills_bytes, scale.build_s) == (40, 2048, 0, 0.25)
    assert "driver: 16 bytes local memory per thread, at most 256 threads per block" in scale.notes
    assert stats["inside_block"].spills_bytes == 16  # no ptxas facts: the driver's local memory stands in

# -- backend contract -------------------------------------------------------------------------------


def test_the_cuda_backend_satisfies_the_backend_protocol() -> None:
    backend = CudaBackend()

    assert isinstance(backend, Backend)
    assert backend.name == "cuda" and backend.oneshot.is_file()
    assert backend.worker_env("cuda:0") == {}


@pytest.mark.parametrize("problem", PROBLEMS)
def test_each_cuda_example_matches_the_backend_marker_and_the_cpp_one_does_not(problem: str) -> None:
    import re

    patterns = CudaBackend.required_patterns
    assert any(re.search(p, _example_source(problem)) for p in patterns)
    assert not any(re.search(p, (EXAMPLE_ROOT / problem / "cpp.py").read_text()) for p in patterns)


@pytest.mark.skipif(torch.cuda.is_available(), reason="describes a host without a GPU")
def test_probe_without_a_gpu_reports_unavailable_with_the_compile_only_reason_when_nvcc_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvcc, "nvcc_path", lambda: "/usr/local/bin/nvcc")

    info = CudaBackend().probe()

    assert not info.available
    assert info.reason == "no CUDA device: compile works (nvcc found, compile-only to cubin for sm_90), verify/profile need a GPU"


@pytest.mark.skipif(torch.cuda.is_available(), reason="describes a host without a GPU")
def test_probe_without_a_gpu_or_nvcc_says_neither_is_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvcc, "nvcc_path", lambda: None)

    info = CudaBackend().probe()

    assert not info.available and info.reason == "no CUDA device and no nvcc"


@needs_nvcc
@pytest.mark.skipif(torch.cuda.is_available(), reason="describes a host without a GPU")
def test_probe_on_this_host_names_the_nvcc_release() -> None:
    info = CudaBackend().probe()

    assert not info.available and info.reason == cuda.REASON_COMPILE_ONLY
    assert "release" in info.version


def test_own_kernels_are_recognised_by_launch_range_and_by_demangled_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_kernels, "_own_names", {"layernorm_rows_kernel", "swish_scale"})
    backend = CudaBackend()

    assert backend.is_own_kernel("cuda::anything")
    assert backend.is_own_kernel("swish_scale")
    assert backend.is_own_kernel("layernorm_rows_kernel(float const*, float const*, float const*, float*, int, float)")
    assert backend.is_own_kernel("void ns::layernorm_rows_kernel<4>(float*)")
    assert not backend.is_own_kernel("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(int)")
    assert not backend.is_own_kernel("cpp::swish")


def test_a_build_request_with_an_option_naming_a_path_is_refused_without_compiling() -> None:
    reply = build_cuda_request({"op": "build_cuda", "source": 'extern "C" __global__ void k() {}', "options": ["-I/etc"]})

    assert reply["ok"] is False and reply["image"] == ""
    assert "'-I/etc' is not allowed" in reply["diagnostics"][0]["message"]


def test_a_build_request_without_source_is_an_error_outcome_not_an_exception() -> None:
    reply = build_cuda_request({"op": "build_cuda", "options": []})

    assert reply["ok"] is False
    assert "needs the CUDA source" in reply["diagnostics"][0]["message"]


def test_a_build_request_for_a_malformed_architecture_is_refused() -> None:
    reply = build_cuda_request({"op": "build_cuda", "source": 'extern "C" __global__ void k() {}', "arch": "sm_90; rm -rf /"})

    assert reply["ok"] is False and "architecture" in reply["diagnostics"][0]["message"]


# -- NVRTC builds (no GPU needed, but libnvrtc is) -------------------------------------------------

KERNEL = r"""
#include <cstdint>
extern "C" __global__ void axpy(const float* __restrict__ x, float* __restrict__ y, float a, int64_t n) {
    __shared__ float staged[256];
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    staged[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    if (i < n) y[i] += a * staged[threadIdx.x];
}
namespace ops {
__global__ void fill(float* y, float v, int n) { int i = threadIdx.x; if (i < n) y[i] = v; }
}
"""


def _fresh(source: str) -> str:
    return source + f"// {uuid.uuid4().hex}\n"


@needs_nvrtc
def test_an_nvrtc_build_takes_under_two_seconds_cold_and_comes_from_the_cache_the_second_time() -> None:
    source = _fresh(KERNEL)

    start = time.perf_counter()
    first = build_cuda(source, arch="sm_90")
    cold = time.perf_counter() - start
    second = build_cuda(source, arch="sm_90")

    assert first.ok and not first.cached, first.diagnostics
    assert cold < 2.0
    assert second.cached and second.image == first.image and Path(first.image).stat().st_size > 0


@needs_nvrtc
def test_nvrtc_reports_ptxas_facts_and_lowered_names_of_cpp_kernels() -> None:
    outcome = build_cuda(_fresh(KERNEL), arch="sm_90")

    ptxas = {k["mangled"]: k for k in outcome.ptxas}
    assert outcome.lowered == {"fill": "_ZN3ops4fillEPffi"}
    assert ptxas["axpy"]["shared_bytes"] == 1024 and ptxas["axpy"]["registers"] > 0
    assert "_ZN3ops4fillEPffi" in ptxas


@needs_nvrtc
def test_an_nvrtc_error_is_located_at_the_line_of_the_file_holding_the_source() -> None:
    source = 'extern "C" __global__ void k(float* y) {\n    y[0] = missing_name;\n}\n'

    outcome = build_cuda(source, line=40, file_label="candidate.py")

    assert not outcome.ok
    assert [str(d) for d in outcome.diagnostics if d.severity == "error"] == ['candidate.py:41: error: identifier "missing_name" is undefined']


@needs_nvrtc
def test_load_cuda_raises_a_build_error_carrying_the_diagnostics() -> None:
    with pytest.raises(BuildError) as info:
        load_cuda('extern "C" __global__ void k(float* y) {\n    y[0] = missing_name;\n}\n')

    assert any(d.severity == "error" and "missing_name" in d.message for d in info.value.diagnostics)


@needs_nvrtc
def test_an_architecture_nvrtc_does_not_know_gets_ptx_for_the_newest_it_does() -> None:
    outcome = build_cuda(_fresh(KERNEL), arch="sm_990")

    assert outcome.ok and outcome.image_kind == "ptx"
    assert outcome.arch == f"compute_{max(cuda.nvrtc_facts().archs)}"
    assert Path(outcome.image).read_bytes().lstrip().startswith(b"//")


@needs_nvrtc
def test_common_standard_headers_compile_under_nvrtc() -> None:
    source = _fresh(
        "#include <cstdint>\n#include <cfloat>\n#include <climits>\n#include <cmath>\n#include <cassert>\n#include <cstdio>\n"
        "#include <cuda_fp16.h>\n"
        'extern "C" __global__ void k(float* y, int64_t n) {\n'
        "    assert(n > 0);\n    y[0] = std::exp(1.0f) + FLT_EPSILON + (INT_MAX > 0) + (float)M_PI + __half2float(__float2half(1.0f));\n}\n"
    )

    outcome = build_cuda(source)

    assert outcome.ok, [str(d) for d in outcome.diagnostics]


# -- on a GPU ---------------------------------------------------------------------------------------


@pytest.fixture
def binding(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Run a test under one binding (cuda.bindings or ctypes), restoring the process-wide choice after."""
    monkeypatch.setenv(cuda.BINDING_ENV, request.param)
    for fn in (cuda_driver._driver, nvrtc._nvrtc, nvrtc.nvrtc_facts):
        fn.cache_clear()
    if request.param == "cuda-python" and importlib.util.find_spec("cuda.bindings") is None:
        pytest.skip("cuda-python (cuda.bindings) is not installed")
    yield request.param
    for fn in (cuda_driver._driver, nvrtc._nvrtc, nvrtc.nvrtc_facts):
        fn.cache_clear()


@pytest.mark.gpu
@pytest.mark.parametrize("binding", ["cuda-python", "ctypes"], indirect=True)
def test_load_cuda_launches_a_kernel_on_the_current_stream_with_correct_results(binding: str) -> None:
    mod = load_cuda(_fresh(KERNEL))
    x = torch.randn(1000, device="cuda")
    y = torch.ones(1000, device="cuda")

    mod.axpy((1000 + 255) // 256, 256, x, y, 2.0, x.numel())
    torch.cuda.synchronize()

    assert cuda_driver._driver().kind == binding
    torch.testing.assert_close(y, 1 + 2 * x)


@pytest.mark.gpu
def test_a_cpp_kernel_in_a_namespace_is_launched_through_its_lowered_name() -> None:
    mod = load_cuda(_fresh(KERNEL))
    y = torch.zeros(64, device="cuda")

    mod.fill(1, 64, y, 3.5, 64)
    torch.cuda.synchronize()

    assert mod.fill.symbol == "_ZN3ops4fillEPffi"
    assert torch.equal(y, torch.full_like(y, 3.5))


@pytest.mark.gpu
def test_load_cuda_builds_under_two_seconds_cold_and_reuses_the_cache() -> None:
    source = _fresh(KERNEL)

    start = time.perf_counter()
    first = load_cuda(source)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    second = load_cuda(source)
    warm = time.perf_counter() - start

    print(f"load_cuda cold {cold:.3f} s, cached {warm:.3f} s")
    assert not first.outcome.cached and second.outcome.cached
    assert cold < 2.0 and warm < cold


@pytest.mark.gpu
def test_built_kernels_report_registers_and_shared_memory_from_the_driver() -> None:
    marker = uuid.uuid4().hex[:8]
    load_cuda(_fresh(KERNEL).replace("axpy", f"axpy_{marker}"))

    stats = {k.name: k for k in CudaBackend().built_kernels()}
    axpy = stats[f"axpy_{marker}"]
    assert axpy.registers is not None and axpy.registers > 0
    assert axpy.shared_memory_bytes == 1024
    assert axpy.spills_bytes == 0
    assert axpy.build_s is not None and any(note.startswith("driver:") for note in axpy.notes)


@pytest.mark.gpu
def test_a_wrong_dtype_or_a_strided_tensor_is_refused_before_the_launch() -> None:
    mod = load_cuda(_fresh(KERNEL))
    x = torch.randn(16, device="cuda")

    with pytest.raises(TypeError, match=r"float\* but got a float64 tensor"):
        mod.axpy(1, 16, x.double(), x, 1.0, 16)
    with pytest.raises(ValueError, match="contiguous"):
        mod.axpy(1, 16, torch.randn(4, 8, device="cuda").t(), x, 1.0, 16)


@pytest.mark.gpu
def test_dynamic_shared_memory_above_48_kib_is_granted_on_launch() -> None:
    mod = load_cuda(_fresh(r"""
extern "C" __global__ void stage(const float* x, float* y, int n) {
    extern __shared__ float buf[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = x[i];
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = buf[n - 1 - i];
}
"""))
    n = 16384  # 64 KiB of floats
    x = torch.randn(n, device="cuda")
    y = torch.empty_like(x)

    mod.stage(1, 256, x, y, n, shared_mem=n * 4)
    torch.cuda.synchronize()

    assert torch.equal(y, x.flip(0))


_counter = itertools.count()


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_kf_cuda_example_{next(_counter)}_{path.parent.name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def worker_patches(monkeypatch: pytest.MonkeyPatch) -> CudaBackend:
    """prepare_worker() as a worker would call it, undone after the test."""
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load_inline", cpp_extension.load_inline)
    backend = CudaBackend()
    backend.prepare_worker()
    return backend


@pytest.mark.gpu
@pytest.mark.parametrize("problem", PROBLEMS)
def test_each_cuda_example_matches_its_reference_and_reports_its_kernels(problem: str, worker_patches: CudaBackend) -> None:
    reference = _load(EXAMPLE_ROOT / problem / "reference.py")
    start = time.perf_counter()
    candidate = _load(EXAMPLE_ROOT / problem / "cuda.py")
    print(f"{problem}: built/loaded in {time.perf_counter() - start:.2f} s")
    init = reference.get_init_inputs()
    torch.manual_seed(0)
    model = reference.Model(*init)
    torch.manual_seed(0)
    model_new = candidate.ModelNew(*init)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    own = model_new.state_dict()
    model_new.load_state_dict({k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape}, strict=False)
    model, model_new = model.cuda(), model_new.cuda()
    torch.manual_seed(1234)
    inputs = [t.cuda() for t in reference.get_inputs()]

    with torch.no_grad():
        expected = model(*[t.clone() for t in inputs])
        got = model_new(*inputs)
    torch.cuda.synchronize()

    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    reported = {k.name: k for k in worker_patches.built_kernels()}
    for decl in find_kernels(_example_source(problem)):
        assert decl.name in reported
        if "load_cuda" in _example_source(problem) or shutil.which("cuobjdump"):
            assert reported[decl.name].registers, reported[decl.name]


@pytest.mark.gpu
def test_instrumented_load_inline_calls_open_profiler_ranges_recognised_as_own(worker_patches: CudaBackend) -> None:
    candidate = _load(EXAMPLE_ROOT / "reduction" / "cuda.py")
    model = candidate.ModelNew(1)
    x = torch.randn(4, 64, 32, device="cuda")

    with worker_patches.instrument(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        model(x)
        torch.cuda.synchronize()

    names = {e.name for e in prof.events()}
    assert "cuda::sum_dim" in names
    kernels = [n for n in names if "sum_dim_kernel" in n and not n.startswith("cuda::")]
    assert kernels and all(worker_patches.is_own_kernel(n) for n in kernels)


@pytest.mark.gpu
def test_the_cuda_oneshot_solution_matches_its_reference(tmp_path: Path) -> None:
    from kfoundry import prompts

    reference_src, solution_src = prompts.oneshot("cuda")
    (tmp_path / "reference.py").write_text(reference_src)
    (tmp_path / "solution.py").write_text(solution_src)
    reference, solution = _load(tmp_path / "reference.py"), _load(tmp_path / "solution.py")
    torch.manual_seed(0)
    inputs = [t.cuda() * 20 for t in reference.get_inputs()]  # saturates tanh on part of the input

    with torch.no_grad():
        expected = reference.Model(*reference.get_init_inputs())(*inputs)
        got = solution.ModelNew(*reference.get_init_inputs())(*inputs)

    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)



class _ServerChannel:
    """Stands in for a worker's channel: answers build requests the way the server's handler does."""

    def __init__(self, candidate: str) -> None:
        self.candidate = candidate
        self.requests: list[dict] = []

    def request(self, header: dict) -> dict:
        self.requests.append(header)
        return build_cuda_request(header, candidate=self.candidate)


@needs_nvrtc
def test_inside_a_worker_load_cuda_asks_the_server_to_build_and_errors_point_at_candidate_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    source = 'extern "C" __global__ void k(float* y) {\n    y[0] = missing_name;\n}\n'
    candidate = f'from kfoundry.backends.cuda import load_cuda\n\nmod = load_cuda(r"""{source}""")\n'
    channel = _ServerChannel(candidate)
    monkeypatch.setattr(cuda_kernels, "trusted_side", lambda: channel)

    with pytest.raises(BuildError) as info:
        load_cuda(source, options=["-O3"], arch="sm_90")

    assert channel.requests == [{"op": "build_cuda", "source": source, "name": "kernel", "options": ["-O3"], "arch": "sm_90"}]
    assert [str(d) for d in info.value.diagnostics if d.severity == "error"] == ['candidate.py:4: error: identifier "missing_name" is undefined']
