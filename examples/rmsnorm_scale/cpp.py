import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cmath>
#include <cstdint>

extern "C" void rmsnorm_rows(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                             int64_t rows, int64_t cols, float eps) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        float sq = 0.0f;
        #pragma omp simd reduction(+ : sq)
        for (int64_t c = 0; c < cols; ++c) sq += xr[c] * xr[c];
        const float inv = 1.0f / std::sqrt(sq / cols + eps);
        #pragma omp simd
        for (int64_t c = 0; c < cols; ++c) yr[c] = xr[c] * inv * w[c];
    }
}
""")


class ModelNew(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        cols = x.shape[-1]
        _lib.rmsnorm_rows(x, self.weight.contiguous(), y, x.numel() // cols, cols, float(self.eps))
        return y
