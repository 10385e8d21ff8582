"""Fast-math is read from what g++ recorded about the build, not from how the source spells it."""

from __future__ import annotations

import shutil

import pytest

from kfoundry.backends.gxx import FAST_MATH_OPTIONS, build, recorded_math_options

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")

_KERNEL = 'extern "C" float total(const float* x, int n) { float s = 0; for (int i = 0; i < n; ++i) s += x[i]; return s; }\n'


def test_a_plain_build_records_no_fast_math_and_warns_of_nothing() -> None:
    outcome = build(_KERNEL + "// -ffast-math Ofast: words in a comment are not options\n")

    assert outcome.ok, outcome.log
    assert outcome.math_options == [] and not [d for d in outcome.diagnostics if d.severity == "warning"]


def test_fast_math_given_as_its_component_flags_is_read_from_the_recorded_command_line() -> None:
    outcome = build(_KERNEL, ["-fno-signed-zeros", "-ffinite-math-only", "-fassociative-math", "-fno-trapping-math"])

    assert outcome.ok, outcome.log
    # -fno-trapping-math keeps every result: it is recorded by GCC but not reported
    assert set(outcome.math_options) == {"command line: -ffinite-math-only", "command line: -fno-signed-zeros", "command line: -fassociative-math"}
    [warning] = [d for d in outcome.diagnostics if d.severity == "warning"]
    assert "fast-math" in warning.message and "float64 oracle" in warning.message


def test_a_pragma_built_by_a_macro_from_split_strings_is_read_as_the_ofast_gcc_applied() -> None:
    source = '#define OPTIMIZE(x) _Pragma(#x)\nOPTIMIZE(GCC optimize("O" "fast"))\n' + _KERNEL

    outcome = build(source)

    assert outcome.ok, outcome.log
    assert outcome.math_options == ["function total: Ofast"]


def test_an_optimize_attribute_on_one_function_is_named_with_that_function() -> None:
    source = _KERNEL + 'extern "C" __attribute__((optimize("fast-math"))) float twice(float a) { return a + a; }\n'

    outcome = build(source)

    assert outcome.ok, outcome.log
    assert outcome.math_options == ["function twice: fast-math"]


def test_a_cached_build_keeps_the_recorded_options() -> None:
    source = _KERNEL + "// cached variant\n"
    first = build(source, ["-ffast-math"])
    again = build(source, ["-ffast-math"])

    assert again.cached and again.math_options == first.math_options == ["command line: -ffast-math"]
    assert [d.message for d in again.diagnostics] == [d.message for d in first.diagnostics if d.severity == "warning"]


def test_options_that_keep_every_result_are_not_fast_math() -> None:
    assert "fno-math-errno" not in FAST_MATH_OPTIONS and "fno-trapping-math" not in FAST_MATH_OPTIONS
    assert recorded_math_options(b"not an elf", ";; Function f (f)\n\n__attribute__((optimize (\"O3\")))\n") == []


@pytest.mark.parametrize(("options", "fast"), [
    (["-arch=sm_90", "--std=c++17", "-O3", "--use_fast_math"], ["--use_fast_math"]),
    (["-arch=sm_90", "--ftz=true", "--prec-div=false", "--fmad=true"], ["--ftz=true", "--prec-div=false"]),
    (["-arch=sm_90", "--ftz=false", "--prec-sqrt=true", "-lineinfo"], []),
])
def test_nvrtc_fast_math_is_read_from_the_option_list_the_compiler_received(options: list[str], fast: list[str]) -> None:
    from kfoundry.backends.nvcc import fast_math_options

    assert fast_math_options(options) == fast
