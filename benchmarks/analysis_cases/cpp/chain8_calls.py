import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cmath>
#include <cstdint>

// One exported function per step of the reference, each a full pass over the tensor.
extern "C" void mul(const float* __restrict__ x, float* __restrict__ y, int64_t n, float a) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * a;
}
extern "C" void add(const float* __restrict__ x, float* __restrict__ y, int64_t n, float a) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] + a;
}
extern "C" void relu(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}
extern "C" void square(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * x[i];
}
extern "C" void absolute(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = std::fabs(x[i]);
}
""")


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        n = x.numel()
        steps = [("mul", 1.5), ("add", 0.25), ("relu", None), ("square", None),
                 ("add", -0.5), ("absolute", None), ("mul", 0.75), ("add", 1.0)]
        for name, arg in steps:
            y = torch.empty_like(x)
            fn = getattr(_lib, name)
            if arg is None:
                fn(x, y, n)
            else:
                fn(x, y, n, float(arg))
            x = y
        return x
