import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cmath>
#include <cstdint>

extern "C" void layernorm_rows(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                               float* __restrict__ y, int64_t rows, int64_t cols, float eps) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        float sum = 0.0f;
        #pragma omp simd reduction(+ : sum)
        for (int64_t c = 0; c < cols; ++c) sum += xr[c];
        const float mean = sum / cols;
        // Two passes (mean, then centred squares) avoid the cancellation of E[x^2] - E[x]^2.
        float sq = 0.0f;
        #pragma omp simd reduction(+ : sq)
        for (int64_t c = 0; c < cols; ++c) {
            const float d = xr[c] - mean;
            sq += d * d;
        }
        // Biased variance, as nn.LayerNorm uses.
        const float rstd = 1.0f / std::sqrt(sq / cols + eps);
        #pragma omp simd
        for (int64_t c = 0; c < cols; ++c) yr[c] = (xr[c] - mean) * rstd * w[c] + b[c];
    }
}
""")


class _Affine(nn.Module):
    """Holds the weight and bias under the names nn.LayerNorm uses, so the reference's state_dict loads."""

    def __init__(self, normalized_shape: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))


class ModelNew(nn.Module):
    def __init__(self, normalized_shape: int, eps: float):
        super().__init__()
        self.ln = _Affine(normalized_shape, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        cols = x.shape[-1]
        _lib.layernorm_rows(x, self.ln.weight.contiguous(), self.ln.bias.contiguous(), y, x.numel() // cols, cols, float(self.ln.eps))
        return y
