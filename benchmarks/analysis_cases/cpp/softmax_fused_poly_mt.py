import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// exp(v) as 2^k * p(r), r = v - k ln2 in [-ln2/2, ln2/2]: a degree-6 polynomial (Cephes expf), within ~2 ulp of
// libm over the range, in plain arithmetic so the loop vectorises without relaxed math (std::min/max and the
// 1.5 * 2^23 rounding trick vectorise; fmin/fmax and nearbyint do not).
static inline float exp_poly(float v) {
    v = std::min(std::max(v, -87.0f), 88.0f);
    const float k = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = v - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

extern "C" void softmax(const float* __restrict__ x, float* __restrict__ y, int64_t rows, int64_t cols) {
    // One function per row, each sweep vectorised: the 16 KB row stays in L1, so memory sees one read and one write.
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        float m = -INFINITY;
        #pragma omp simd reduction(max : m)
        for (int64_t c = 0; c < cols; ++c) m = std::fmax(m, xr[c]);
        float s = 0.0f;
        #pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < cols; ++c) {
            yr[c] = exp_poly(xr[c] - m);
            s += yr[c];
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
        _lib.softmax(x, y, x.shape[0], x.shape[1])
        return y
