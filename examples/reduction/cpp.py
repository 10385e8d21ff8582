import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cstdint>
#include <vector>

// x viewed as (outer, r, inner); out is (outer, inner).
extern "C" void sum_dim(const float* __restrict__ x, float* __restrict__ out, int64_t outer, int64_t r, int64_t inner) {
    #pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < outer; ++o) {
        const float* xo = x + o * r * inner;
        // Walking the reduced dim in the outer loop keeps the inner loop unit-stride (vectorised)
        // instead of striding by `inner` per element; double accumulators keep long sums exact enough.
        std::vector<double> acc(inner, 0.0);
        for (int64_t k = 0; k < r; ++k) {
            const float* row = xo + k * inner;
            #pragma omp simd
            for (int64_t i = 0; i < inner; ++i) acc[i] += row[i];
        }
        for (int64_t i = 0; i < inner; ++i) out[o * inner + i] = static_cast<float>(acc[i]);
    }
}
""")


class ModelNew(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        dim = self.dim % x.dim()
        outer = 1
        for size in x.shape[:dim]:
            outer *= size
        inner = 1
        for size in x.shape[dim + 1 :]:
            inner *= size
        shape = list(x.shape)
        shape[dim] = 1
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
        _lib.sum_dim(x, out, outer, x.shape[dim], inner)
        return out
