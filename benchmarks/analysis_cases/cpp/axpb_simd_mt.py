import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cstdint>

extern "C" void axpb(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
    // All cores, vectorised: one read and one write per element.
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * 1.5f + 0.25f;
}
""")


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        _lib.axpb(x, y, x.numel())
        return y

