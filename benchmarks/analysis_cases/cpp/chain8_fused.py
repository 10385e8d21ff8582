import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cmath>
#include <cstdint>

extern "C" void chain(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
    // All eight steps on each element in registers: one read, one write.
    for (int64_t i = 0; i < n; ++i) {
        float v = x[i] * 1.5f + 0.25f;
        v = v > 0.0f ? v : 0.0f;
        v = std::fabs(v * v - 0.5f);
        y[i] = v * 0.75f + 1.0f;
    }
}
""")


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        _lib.chain(x, y, x.numel())
        return y
