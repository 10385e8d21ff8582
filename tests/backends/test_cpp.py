"""The cpp backend's candidate API: cached g++ builds, checked C-ABI calls, located diagnostics."""

from __future__ import annotations

import uuid

import pytest
import torch

from kfoundry.backends import UnknownBackendError, get_backend
from kfoundry.backends.cpp import BuildError, load_cpp
from kfoundry.backends.gxx import FlagError, build, parse_diagnostics

SOURCE = r"""
#include <cstdint>
extern "C" void axpy(const float* x, float* y, float a, int64_t n) {
  #pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
extern "C" double dot(const double* x, const double* y, int n) {
  double s = 0; for (int i = 0; i < n; ++i) s += x[i] * y[i]; return s;
}
"""


def test_exported_functions_take_tensors_and_scalars() -> None:
    lib = load_cpp(SOURCE)
    x, y = torch.randn(1000), torch.zeros(1000)
    lib.axpy(x, y, 2.0, x.numel())
    assert torch.allclose(y, 2 * x)
    a = torch.arange(4, dtype=torch.float64)
    assert lib.dot(a, a, 4) == pytest.approx(14.0)


def test_a_tensor_of_the_wrong_dtype_is_refused_before_the_call() -> None:
    lib = load_cpp(SOURCE)
    with pytest.raises(TypeError, match="float\\* but got a float64 tensor"):
        lib.axpy(torch.zeros(4, dtype=torch.float64), torch.zeros(4), 1.0, 4)


def test_a_non_contiguous_tensor_is_refused() -> None:
    lib = load_cpp(SOURCE)
    with pytest.raises(ValueError, match="contiguous"):
        lib.axpy(torch.zeros(4, 4).t(), torch.zeros(16), 1.0, 16)


def test_a_wrong_argument_count_is_refused() -> None:
    lib = load_cpp(SOURCE)
    with pytest.raises(TypeError, match="takes 4 arguments"):
        lib.axpy(torch.zeros(4), torch.zeros(4), 1.0)


def test_a_second_build_of_the_same_source_comes_from_the_cache() -> None:
    source = SOURCE + f"// {uuid.uuid4().hex}\n"
    first = build(source)
    second = build(source)
    assert first.ok and not first.cached and second.cached and second.library == first.library


def test_compile_errors_carry_located_diagnostics() -> None:
    with pytest.raises(BuildError) as info:
        load_cpp('extern "C" void f() {\n  int x = ;\n}\n')
    assert any(d.line == 2 and d.severity == "error" for d in info.value.diagnostics)


def test_diagnostics_are_relabelled_to_the_candidate_file_with_its_line_offset() -> None:
    log = "/tmp/x/kernel.cpp:3:5: error: 'y' was not declared in this scope\n/usr/include/foo.h:1:1: note: here"
    diags = parse_diagnostics(log, "kernel.cpp", line_offset=10, file_label="candidate.py")
    assert str(diags[0]) == "candidate.py:13: error: 'y' was not declared in this scope"
    assert diags[1].file == "/usr/include/foo.h" and diags[1].line == 1


def test_flags_that_could_reach_outside_the_build_are_refused() -> None:
    with pytest.raises(FlagError):
        build(SOURCE, ["-fplugin=/tmp/evil.so"])
    with pytest.raises(FlagError):
        build(SOURCE, ["-I/etc"])


def test_unknown_backend_names_list_the_known_ones() -> None:
    with pytest.raises(UnknownBackendError, match="cpp"):
        get_backend("fortran")


def test_backend_probes_report_this_host() -> None:
    assert get_backend("cpp").probe().available
    info = get_backend("triton").probe()
    assert info.available and (info.interpreted or info.device.startswith("cuda"))
