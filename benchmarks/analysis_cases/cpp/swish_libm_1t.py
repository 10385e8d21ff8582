import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cmath>
#include <cstdint>

extern "C" void swish(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
    // One thread; std::exp is a scalar libm call (vector expf needs -ffast-math), so each element waits on it.
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i];
        y[i] = v / (1.0f + std::exp(-v)) * 1.75f;
    }
}
""")


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        _lib.swish(x, y, x.numel())
        return y

