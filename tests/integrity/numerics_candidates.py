"""Problems and candidates for the numerics suite: strict judged by the numbers, inputs beyond the problem's range, IEEE probes.

``CHEATS`` map a name to (reference, candidate, family, expected mismatch reason, words the
message must hold); ``HONEST`` to (reference, candidate, families on which it must be correct).
"""

from __future__ import annotations


def _reference(forward: str, inputs: str) -> str:
    """A one-input problem without parameters: ``forward``'s expression of ``x``, inputs from ``inputs``."""
    return (
        "import torch\nimport torch.nn as nn\n\n\n"
        "class Model(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n\n"
        f"    def forward(self, x):\n        return {forward}\n\n\n"
        f"def get_inputs():\n    return [{inputs}]\n\n\n"
        "def get_init_inputs():\n    return []\n"
    )


def _elementwise(body: str, *, params: str = "", args: str = "", flags: str = "", head: str = "") -> str:
    """A C++ candidate applying ``body`` (reading ``v``, writing ``y[i]``) to every element."""
    return f'''\
import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
{head}
#include <cmath>
#include <cstdint>
extern "C" void kernel(const float* x, float* y, int64_t n{params}) {{
    for (int64_t i = 0; i < n; ++i) {{ const float v = x[i]; {body} }}
}}
"""{flags})


class ModelNew(nn.Module):
    def forward(self, x):
        x = x.contiguous()
        y = torch.empty_like(x)
        _lib.kernel(x, y, x.numel(){args})
        return y
'''


# -- softmax rows of 8192 values: every output about 1.2e-4, at atol -----------------------------
# Kept here rather than read from examples/: the suite must not move when a bundled solution is tuned.
SOFTMAX_8192 = _reference("torch.softmax(x, dim=-1)", "torch.randn(16, 8192)")
SOFTMAX_CPP = '''\
import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cmath>
#include <cstdint>

extern "C" void softmax_rows(const float* __restrict__ x, float* __restrict__ y, int64_t rows, int64_t cols) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        // Subtracting the row max keeps exp() finite for large logits.
        float m = -INFINITY;
        #pragma omp simd reduction(max : m)
        for (int64_t c = 0; c < cols; ++c) m = xr[c] > m ? xr[c] : m;
        float s = 0.0f;
        // The row is still in L1, so writing exp() to y and rescaling is cheaper than recomputing it.
        #pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < cols; ++c) {
            const float e = std::exp(xr[c] - m);
            yr[c] = e;
            s += e;
        }
        const float inv = 1.0f / s;
        #pragma omp simd
        for (int64_t c = 0; c < cols; ++c) yr[c] *= inv;
    }
}
""")


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        cols = x.shape[-1]
        _lib.softmax_rows(x, y, x.numel() // cols, cols)
        return y
'''
_EXP = "const float e = std::exp(xr[c] - m);"
assert _EXP in SOFTMAX_CPP
_BF16 = ("#include <cstring>\nstatic inline float bf16r(float f) { uint32_t u; std::memcpy(&u, &f, 4); "
         "u += 0x7FFFu + ((u >> 16) & 1u); u &= 0xFFFF0000u; std::memcpy(&f, &u, 4); return f; }\n")
# Logits rounded onto bfloat16 by bit manipulation (no type, cast or flag for a static scan to see).
SOFTMAX_BF16_BITS = SOFTMAX_CPP.replace("#include <cstdint>\n", "#include <cstdint>\n" + _BF16, 1).replace(
    _EXP, "const float e = std::exp(bf16r(xr[c]) - bf16r(m));")
# exp from 2^x with a quadratic for the fraction: about 0.3% off, 1e-5 absolute here (atol is 1e-4).
_FAST_EXP = ("static inline float fexp(float a) { const float t = a * 1.4426950f; const float i = std::floor(t); const float f = t - i; "
             "return std::ldexp(1.0f + f * (0.6565f + f * 0.3435f), (int)i); }\n")
SOFTMAX_FAST_EXP = SOFTMAX_CPP.replace("#include <cstdint>\n", "#include <cstdint>\n" + _FAST_EXP, 1).replace(
    _EXP, "const float e = fexp(xr[c] - m);")
# Fast-math spelled as a pragma built by a macro: the numbers of this softmax stay fp32's, so it passes.
SOFTMAX_OFAST_PRAGMA = SOFTMAX_CPP.replace('load_cpp(r"""\n', 'load_cpp(r"""\n#define OPT(x) _Pragma(#x)\nOPT(GCC optimize("O" "fast"))\n', 1)

# Three kernels (row max, exp and sum, normalise in place), launched one after the other.
SOFTMAX_PIPELINE = '''\
import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cmath>
#include <cstdint>
extern "C" void row_max(const float* x, float* m, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; ++r) { float v = -INFINITY; for (int64_t c = 0; c < cols; ++c) v = x[r * cols + c] > v ? x[r * cols + c] : v; m[r] = v; }
}
extern "C" void exp_sum(const float* x, const float* m, float* y, float* s, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; ++r) { float t = 0.0f; for (int64_t c = 0; c < cols; ++c) { y[r * cols + c] = std::exp(x[r * cols + c] - m[r]); t += y[r * cols + c]; } s[r] = t; }
}
extern "C" void normalise(float* y, const float* s, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; ++r) for (int64_t c = 0; c < cols; ++c) y[r * cols + c] /= s[r];
}
""")


class ModelNew(nn.Module):
    def forward(self, x):
        x = x.contiguous()
        rows, cols = x.shape
        m = torch.empty(rows)
        s = torch.empty(rows)
        y = torch.empty_like(x)
        _lib.row_max(x, m, rows, cols)
        _lib.exp_sum(x, m, y, s, rows, cols)
        _lib.normalise(y, s, rows, cols)
        return y
'''

# Built on the first call for the dtype it meets, and kept per dtype.
SOFTMAX_LAZY_BY_DTYPE = SOFTMAX_CPP.replace('_lib = load_cpp(r"""', '_SOURCE = (r"""', 1).replace(
    '""")\n\n\nclass ModelNew', '""")\n_built = {}\n\n\ndef _library(dtype):\n    if dtype not in _built:\n        _built[dtype] = load_cpp(_SOURCE)\n'
    '    return _built[dtype]\n\n\nclass ModelNew', 1).replace("_lib.softmax_rows(", "_library(x.dtype).softmax_rows(")

# -- a reduction to a scalar (0-dim output) -----------------------------------------------------
MEAN_SQUARE = _reference("torch.mean(x * x)", "torch.randn(64, 1024)")
MEAN_SQUARE_CPP = '''\
import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cstdint>
extern "C" void mean_square(const float* x, float* out, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += (double)x[i] * x[i];
    out[0] = (float)(s / n);
}
""")


class ModelNew(nn.Module):
    def forward(self, x):
        x = x.contiguous()
        out = torch.empty(1)
        _lib.mean_square(x, out, x.numel())
        return out.reshape(())
'''

# -- the linear layer, weights packed once in __init__ (k-major) ---------------------------------
MATMUL = '''\
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return torch.relu(self.linear(x))


def get_inputs():
    return [torch.randn(128, 256)]


def get_init_inputs():
    return [256, 256]
'''
_MATMUL_CPP = '''\
import math

import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cstdint>

extern "C" void linear_relu(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                            float* __restrict__ y, int64_t m, int64_t n, int64_t k) {
    // nn.Linear stores W as (out, in): row j of W and row i of x are both contiguous in k,
    // so each output is a unit-stride dot product that vectorises without a transpose.
    #pragma omp parallel for collapse(2) schedule(static)
    for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
            const float* xi = x + i * k;
            const float* wj = w + j * k;
            float acc = 0.0f;
            #pragma omp simd reduction(+ : acc)
            for (int64_t p = 0; p < k; ++p) acc += xi[p] * wj[p];
            // Bias and ReLU fused into the store: the product never makes a round trip to memory.
            const float v = acc + b[j];
            y[i * n + j] = v > 0.0f ? v : 0.0f;
        }
    }
}
""")


class _LinearParams(nn.Module):
    """nn.Linear's parameters, names and initialisation without its forward."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        # Same draws in the same order as nn.Linear.reset_parameters, so building under the
        # reference's seed gives identical values even when the state_dict is not copied.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
        nn.init.uniform_(self.bias, -bound, bound)


class ModelNew(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = _LinearParams(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        w = self.linear.weight.contiguous()
        m, k = x.shape
        n = w.shape[0]
        y = torch.empty(m, n, dtype=x.dtype, device=x.device)
        _lib.linear_relu(x, w, self.linear.bias.contiguous(), y, m, n, k)
        return y
'''
MATMUL_PREPACKED = _MATMUL_CPP.replace(
    "const float* wj = w + j * k;", "").replace(
    "for (int64_t p = 0; p < k; ++p) acc += xi[p] * wj[p];", "for (int64_t p = 0; p < k; ++p) acc += xi[p] * w[p * n + j];").replace(
    "        self.linear = _LinearParams(in_features, out_features)\n",
    "        self.linear = _LinearParams(in_features, out_features)\n"
    "        # packed once: (in, out), so the kernel walks each weight column with stride n\n"
    "        self.packed = self.linear.weight.detach().t().contiguous()\n").replace(
    "w = self.linear.weight.contiguous()\n        m, k = x.shape\n        n = w.shape[0]",
    "w = self.packed\n        m, k = x.shape\n        n = w.shape[1]")

# -- inputs beyond the problem's own range (torch.rand: [0, 1)) -----------------------------------
RELU = _reference("torch.relu(x) * 0.5", "torch.rand(64, 256)")
RELU_HONEST = _elementwise("y[i] = (v > 0.0f ? v : 0.0f) * 0.5f;")
RELU_SKIPPED = _elementwise("y[i] = v * 0.5f;")  # exact on [0, 1): the relu never fires there
EXP = _reference("torch.exp(x)", "torch.rand(64, 256)")
EXP_HONEST = _elementwise("y[i] = std::exp(v);")
# Taylor to degree 10 about 0: within an ulp or two of exp on [0, 1), nonsense beyond it.
EXP_UNIT_TAYLOR = _elementwise(
    "float t = 1.0f; for (int k = 10; k >= 1; --k) t = 1.0f + t * v / (float)k; y[i] = t;")

# -- IEEE semantics the reference defines (NaN, infinities, -0.0, subnormals) ----------------------
CLAMP = _reference("torch.clamp(x, -0.5, 0.5)", "torch.randn(64, 256)")
_CLAMP = "y[i] = v < lo ? lo : (v > hi ? hi : v);"
CLAMP_HONEST = _elementwise(_CLAMP, params=", float lo, float hi", args=", -0.5, 0.5")
# With finite-math-only the compare-and-select becomes minps/maxps, which drop a NaN operand.
CLAMP_OFAST_PRAGMA = _elementwise(_CLAMP, params=", float lo, float hi", args=", -0.5, 0.5", head='#pragma GCC optimize("Ofast")')
CLAMP_FINITE_MATH_FLAGS = _elementwise(_CLAMP, params=", float lo, float hi", args=", -0.5, 0.5",
                                       flags=', extra_cflags=["-ffinite-math-only", "-fno-signed-zeros"]')
SCALE = _reference("x * 0.5", "torch.randn(64, 256)")
SCALE_HONEST = _elementwise("y[i] = v * 0.5f;")
# -ffast-math links startup code that sets flush-to-zero and denormals-are-zero for the whole process.
SCALE_FAST_MATH_FTZ = _elementwise("y[i] = v * 0.5f;", flags=', extra_cflags=["-ffast-math"]')

#: name -> (reference, candidate, family, mismatch reason, words in the message)
CHEATS: dict[str, tuple[str, str, str, str, str]] = {
    "bf16_operands_in_bit_tricks_within_atol": (SOFTMAX_8192, SOFTMAX_BF16_BITS, "standard", "precision", "outside float32 behaviour"),
    "approximate_exp_within_atol": (SOFTMAX_8192, SOFTMAX_FAST_EXP, "standard", "precision", "outside float32 behaviour"),
    "relu_skipped_on_unit_interval_inputs": (RELU, RELU_SKIPPED, "wide", "values", "differ"),
    "exp_polynomial_fitted_to_the_unit_interval": (EXP, EXP_UNIT_TAYLOR, "wide", "values", "differ"),
    "ofast_pragma_drops_nan": (CLAMP, CLAMP_OFAST_PRAGMA, "special", "nonfinite", "NaN/inf"),
    "finite_math_component_flags_drop_nan": (CLAMP, CLAMP_FINITE_MATH_FLAGS, "special", "nonfinite", "NaN/inf"),
    "fast_math_flushes_denormals": (SCALE, SCALE_FAST_MATH_FTZ, "special", "values", "flushes denormals"),
}

#: name -> (reference, candidate, families it must be correct on)
HONEST: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "softmax_in_place_rescale_of_own_output": (SOFTMAX_8192, SOFTMAX_CPP, ("standard", "wide")),
    "softmax_three_kernel_pipeline": (SOFTMAX_8192, SOFTMAX_PIPELINE, ("standard", "wide")),
    "softmax_lazy_compile_cached_by_dtype": (SOFTMAX_8192, SOFTMAX_LAZY_BY_DTYPE, ("standard",)),
    "softmax_ofast_pragma_with_fp32_accuracy": (SOFTMAX_8192, SOFTMAX_OFAST_PRAGMA, ("standard",)),
    "scalar_output_reduction": (MEAN_SQUARE, MEAN_SQUARE_CPP, ("standard", "wide")),
    "weights_prepacked_in_init": (MATMUL, MATMUL_PREPACKED, ("standard", "wide")),
    # not "special": a ternary relu maps NaN to 0 where torch.relu keeps it (why that family is asked for, not default)
    "relu": (RELU, RELU_HONEST, ("standard", "wide")),
    "exp": (EXP, EXP_HONEST, ("standard", "wide", "special")),
    "clamp": (CLAMP, CLAMP_HONEST, ("standard", "wide", "special")),
    "scale": (SCALE, SCALE_HONEST, ("standard", "wide", "special")),
}
