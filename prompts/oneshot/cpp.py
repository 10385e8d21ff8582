# One-shot example for the cpp backend: a KernelBench problem and a correct candidate for it.
# Read as data by kfoundry.prompts.oneshot (parsed with ast, never imported).

REFERENCE = '''import torch
import torch.nn as nn


class Model(nn.Module):
    """tanh of a scaled sum: y = tanh(a + alpha * b)."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.tanh(a + self.alpha * b)


batch_size = 128
dim = 1024
alpha = 0.5


def get_inputs():
    return [torch.randn(batch_size, dim), torch.randn(batch_size, dim)]


def get_init_inputs():
    return [alpha]
'''

SOLUTION = r'''import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

# Built once when the module is imported (cached by content hash), not on every forward call.
_lib = load_cpp(r"""
#include <cmath>
#include <cstdint>

extern "C" void add_tanh(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                         int64_t n, float alpha) {
    // One fused pass over memory: the reference writes and re-reads a + alpha * b.
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        y[i] = std::tanh(a[i] + alpha * b[i]);
    }
}
""")


class ModelNew(nn.Module):
    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # The kernel indexes flat memory, so inputs must be dense and row-major.
        a = a.contiguous()
        b = b.contiguous()
        y = torch.empty_like(a)
        # Tensors pass as pointers (dtype and contiguity are checked); Python numbers as scalars.
        _lib.add_tanh(a, b, y, a.numel(), float(self.alpha))
        return y
'''
