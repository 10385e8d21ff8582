import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cstdint>

extern "C" void matmul(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                       int64_t m, int64_t n, int64_t k) {
    // i-k-j order on one thread: the inner loop runs along a row of B and of C, unit stride, and vectorises.
    for (int64_t i = 0; i < m; ++i) {
        float* ci = c + i * n;
        for (int64_t j = 0; j < n; ++j) ci[j] = 0.0f;
        for (int64_t p = 0; p < k; ++p) {
            const float av = a[i * k + p];
            const float* bp = b + p * n;
            #pragma omp simd
            for (int64_t j = 0; j < n; ++j) ci[j] += av * bp[j];
        }
    }
}
""")


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.contiguous(), b.contiguous()
        m, k = a.shape
        n = b.shape[1]
        c = torch.empty(m, n, dtype=a.dtype, device=a.device)
        _lib.matmul(a, b, c, m, n, k)
        return c

