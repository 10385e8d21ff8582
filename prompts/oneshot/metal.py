# One-shot example for the metal backend (torch.mps.compile_shader): a KernelBench problem and a correct candidate for it.
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
    return [alpha]'''

SOLUTION = r'''import torch
import torch.nn as nn

# Compiled once when the module is imported; each `kernel void` becomes a callable on the library.
_lib = torch.mps.compile_shader(r"""
#include <metal_stdlib>
using namespace metal;

kernel void add_tanh(device const float* a [[buffer(0)]],
                     device const float* b [[buffer(1)]],
                     device float* y [[buffer(2)]],
                     constant float& alpha [[buffer(3)]],
                     constant uint& n [[buffer(4)]],
                     uint i [[thread_position_in_grid]]) {
    // The grid is exactly `threads` long, but guard anyway so a rounded-up launch stays safe.
    if (i < n) y[i] = precise::tanh(a[i] + alpha * b[i]);
}
""")


class ModelNew(nn.Module):
    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = a.contiguous()
        b = b.contiguous()
        y = torch.empty_like(a)
        n = a.numel()
        if n:
            # Tensors bind as device buffers in argument order, Python numbers as constant scalars.
            _lib.add_tanh(a, b, y, float(self.alpha), n, threads=n, group_size=256)
        return y
'''
