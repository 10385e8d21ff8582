import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cmath>
#include <cstdint>

extern "C" void swish_scale(const float* __restrict__ x, float* __restrict__ y, int64_t n, float scale) {
    // One fused pass: read x once, write y once (the reference makes three passes).
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i];
        // exp(-v) overflows to inf for v < -88; v / inf gives -0, which is the right limit.
        y[i] = v / (1.0f + std::exp(-v)) * scale;
    }
}
""")


class ModelNew(nn.Module):
    def __init__(self, scale_factor: float):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        _lib.swish_scale(x, y, x.numel(), float(self.scale_factor))
        return y
