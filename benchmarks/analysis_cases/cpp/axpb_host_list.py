import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cstdint>

extern "C" void axpb_rows(const float* __restrict__ x, const float* __restrict__ scale, float* __restrict__ y,
                          int64_t rows, int64_t cols) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
        #pragma omp simd
        for (int64_t c = 0; c < cols; ++c) y[r * cols + c] = x[r * cols + c] * scale[c] + 0.25f;
}
""")


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        rows, cols = x.shape
        # Per-column scales rebuilt in Python on every call (all 1.5 here), element by element.
        scale = torch.tensor([1.5 * (1.0 + 0.0 * c) for c in range(cols * 256)][:cols], dtype=x.dtype)
        y = torch.empty_like(x)
        _lib.axpb_rows(x, scale, y, rows, cols)
        return y
