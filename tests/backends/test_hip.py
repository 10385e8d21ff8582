"""The hip backend checks KernelBench-style HIP candidates with hipcc on a host without an AMD GPU, and says why it cannot run them."""

from __future__ import annotations

import ast
import shutil
import uuid

import pytest

from kfoundry import prompts
from kfoundry.backends import get_backend, hip
from kfoundry.errors import Unavailable
from kfoundry.tools.runtime import probe, resolve_backend

needs_hipcc = pytest.mark.skipif(shutil.which("hipcc") is None, reason="hipcc is not installed (Debian: apt-get install hipcc)")


def _resolve(tree: ast.Module):  # noqa: ANN202 - the scans' own resolver, built the way ast_rules builds it
    from kfoundry.verify.ast_rules import _Scan

    scan = _Scan()
    scan.visit(tree)
    return scan.root


def _candidate(body: str, *, keyword: str = "cpp_sources") -> str:
    # A fresh comment keeps each test's source out of the compile cache.
    return (
        "import os\n"
        "import torch\n"
        "from torch.utils.cpp_extension import load_inline\n"
        "\n"
        'os.environ["CXX"] = "hipcc"\n'
        "\n"
        f'SRC = r"""// {uuid.uuid4().hex}\n'
        f"{body}"
        '"""\n'
        "\n"
        f'ext = load_inline("k", {keyword}=SRC, functions=["run"])\n'
    )


TILED = """#include <hip/hip_runtime.h>
__global__ void tiled_scale(const float* x, float* y, float a, long long n) {
    __shared__ float tile[256];
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    tile[threadIdx.x] = i < n ? x[i] : 0.f;
    __syncthreads();
    if (i < n) y[i] = a * tile[threadIdx.x];
}
torch::Tensor run(torch::Tensor x) { return x; }
"""


@needs_hipcc
def test_a_hip_kernel_compiles_without_a_gpu_and_reports_vgprs_and_lds_bytes() -> None:
    outcome = get_backend("hip").compile_only(_candidate(TILED), timeout_s=300)

    assert outcome.ok, outcome.diagnostics
    [kernel] = outcome.kernels
    assert kernel.name == "tiled_scale"
    assert kernel.shared_memory_bytes == 256 * 4
    assert kernel.registers is not None and kernel.registers > 0
    assert kernel.spills_bytes == 0
    assert kernel.notes[0].startswith(f"{hip.target_arch()[0]} code object from hipcc")


@needs_hipcc
def test_a_compile_error_is_reported_at_the_candidate_line_holding_it() -> None:
    broken = TILED.replace("y[i] = a * tile[threadIdx.x];", "y[i] = a * tile[threadIdx.x] + undefined_offset;")
    candidate = _candidate(broken)
    line = candidate.splitlines().index("    if (i < n) y[i] = a * tile[threadIdx.x] + undefined_offset;") + 1

    outcome = get_backend("hip").compile_only(candidate, timeout_s=300)

    assert not outcome.ok and outcome.kernels == []
    assert outcome.diagnostics == [f"candidate.py:{line}: error: use of undeclared identifier 'undefined_offset'"]


@needs_hipcc
def test_cuda_sources_are_compiled_as_hip_as_rocm_pytorch_hipifies_them() -> None:
    outcome = get_backend("hip").compile_only(_candidate(TILED.replace("#include <hip/hip_runtime.h>\n", ""), keyword="cuda_sources"), timeout_s=300)

    assert outcome.ok, outcome.diagnostics
    assert [k.name for k in outcome.kernels] == ["tiled_scale"]


@needs_hipcc
def test_the_hip_one_shot_solution_in_kernelbench_style_compiles() -> None:
    _, solution = prompts.oneshot("hip")

    outcome = get_backend("hip").compile_only(solution, timeout_s=300)

    assert outcome.ok, outcome.diagnostics
    assert [k.name for k in outcome.kernels] == ["add_tanh_kernel"]


def test_a_source_built_at_run_time_cannot_be_checked_and_says_so() -> None:
    candidate = "from torch.utils.cpp_extension import load_inline\n\next = load_inline('k', cpp_sources=make_source(), functions=['f'])\n"

    outcome = hip.compile_only(candidate, arch="gfx90a")

    assert not outcome.ok
    if shutil.which("hipcc") is None:
        assert outcome.diagnostics == ["candidate.py: error: compile-only needs hipcc on PATH and this host has none"]
    else:
        assert outcome.diagnostics[0].startswith("candidate.py:3: warning: the cpp_sources passed to load_inline(...) is built at run time")
        assert outcome.diagnostics[1].startswith("candidate.py: error: no HIP source found")


@needs_hipcc
def test_an_offload_target_that_is_not_an_amdgpu_one_is_refused_before_hipcc_runs() -> None:
    outcome = hip.compile_only(_candidate(TILED), arch="sm_90; rm -rf /")

    assert not outcome.ok
    assert outcome.diagnostics == ["candidate.py: error: 'sm_90; rm -rf /' is not an AMDGPU target such as gfx942 or gfx90a"]


def test_the_offload_target_comes_from_kfoundry_hip_arch_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hip.ARCH_ENV, "gfx90a")

    assert hip.target_arch() == ("gfx90a", "KFOUNDRY_HIP_ARCH=gfx90a")


@needs_hipcc
def test_without_a_rocm_device_hip_is_compile_only_with_its_version_and_target() -> None:
    info = get_backend("hip").probe()

    assert not info.available and info.compile_only
    assert info.version.startswith("HIP version:")
    assert info.reason.startswith(f"no ROCm device: compile works (hipcc, device code for {hip.target_arch()[0]}")
    assert "verify/profile need an AMD GPU" in info.reason


def test_without_hipcc_hip_is_unavailable_and_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hip, "hipcc_path", lambda: None)

    info = get_backend("hip").probe()
    outcome = get_backend("hip").compile_only(_candidate(TILED))

    assert not info.available and not info.compile_only
    assert "apt-get install hipcc" in info.reason
    assert outcome.diagnostics == ["candidate.py: error: compile-only needs hipcc on PATH and this host has none"]


def test_verify_and_profile_refuse_hip_here_with_the_probes_reason() -> None:
    reason = probe("hip").reason

    with pytest.raises(Unavailable, match="backend 'hip' is unavailable on this host") as raised:
        resolve_backend("hip")

    assert reason in str(raised.value)


def test_the_resource_usage_remarks_become_one_record_per_kernel() -> None:
    log = "\n".join(
        f"k.hip:{line}:1: remark: {text} [-Rpass-analysis=kernel-resource-usage]"
        for line, text in ((2, "Function Name: _Z1fPf"), (2, "    VGPRs: 6"), (2, "    LDS Size [bytes/block]: 1024"),
                           (9, "Function Name: g"), (9, "    VGPRs Spill: 3"))
    )

    assert hip.parse_resource_usage(log) == [
        {"name": "_Z1fPf", "VGPRs": "6", "LDS Size [bytes/block]": "1024"},
        {"name": "g", "VGPRs Spill": "3"},
    ]


def test_a_load_inline_without_a_global_kernel_is_a_marker_hit() -> None:
    tree = ast.parse(_candidate("torch::Tensor run(torch::Tensor x) { return x; }\n") + "print(ext)\n")

    hits = get_backend("hip").marker_hits(tree, _resolve(tree))

    assert [h.message for h in hits] == ["no __global__ kernel in the sources passed to load_inline"]


def test_a_kernelbench_hip_candidate_passes_the_marker_scan() -> None:
    tree = ast.parse(prompts.oneshot("hip")[1])

    assert get_backend("hip").marker_hits(tree, _resolve(tree)) == []


def test_hip_bfloat16_in_the_kernel_source_is_a_bf16_use_at_its_line() -> None:
    candidate = _candidate("__global__ void k(__hip_bfloat16* y) {}\ntorch::Tensor run(torch::Tensor x) { return x; }\n")
    tree = ast.parse(candidate)
    line = candidate.splitlines().index("__global__ void k(__hip_bfloat16* y) {}") + 1

    hits = get_backend("hip").precision_hits(tree, _resolve(tree))

    assert [(h.line, h.kind) for h in hits] == [(line, "bf16")]
