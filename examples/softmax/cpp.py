import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cmath>
#include <cstdint>

// exp(x) for x <= 0 in plain arithmetic, so the loop vectorises (std::exp stays a scalar call
// without fast-math; std::floor, or a branch beside a float-to-int conversion, also keeps GCC
// from vectorising): x = k ln2 + r with ln2 split in two (Cody-Waite) and k rounded by the
// 1.5 * 2^23 trick, exp(r) by a degree-6 Taylor polynomial on |r| <= ln2/2 (error ~2 ulp), 2^k
// applied in two halves so results below FLT_MIN come out subnormal as exp's do. A NaN stays
// NaN (the comparison is false and the polynomial carries it); -inf gives 0.
static inline float exp_nonpositive(float x) {
    x = x < -110.0f ? -110.0f : x;  // exp(-110) rounds to 0 in float: anything lower does too
    const float shifted = x * 1.44269504088896341f + 12582912.0f;
    const float k = shifted - 12582912.0f;
    const int32_t ki = __builtin_bit_cast(int32_t, shifted) - 0x4B400000;
    float r = x - k * 0.693145751953125f;
    r = r - k * 1.428606765330187e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t half = ki / 2;
    return p * __builtin_bit_cast(float, (half + 127) << 23) * __builtin_bit_cast(float, (ki - half + 127) << 23);
}

extern "C" void softmax_rows(const float* __restrict__ x, float* __restrict__ y, int64_t rows, int64_t cols) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        // Subtracting the row max keeps exp() finite for large logits.
        float m = -INFINITY;
        #pragma omp simd reduction(max : m)
        for (int64_t c = 0; c < cols; ++c) m = xr[c] > m ? xr[c] : m;
        // The row is still in L1, so writing exp() to y and rescaling is cheaper than recomputing it.
        // exp and the sum in separate loops: GCC vectorises neither when a reduction shares the exp loop.
        const float mx = m;
        #pragma omp simd
        for (int64_t c = 0; c < cols; ++c) yr[c] = exp_nonpositive(xr[c] - mx);
        float s = 0.0f;
        #pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < cols; ++c) s += yr[c];
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
