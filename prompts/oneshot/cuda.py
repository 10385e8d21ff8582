# One-shot example for the cuda backend: a KernelBench problem and a correct candidate for it.
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

from kfoundry.backends.cuda import load_cuda

# Compiled once when the module is imported (NVRTC, cached by content hash), not on every forward call.
_mod = load_cuda(r"""
extern "C" __global__ void add_tanh(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                                    long long n, float alpha) {
    // One fused pass over memory: the reference writes and re-reads a + alpha * b.
    // A grid-stride loop covers any n with any grid; 64-bit indices stay safe past 2^31 elements.
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = tanhf(a[i] + alpha * b[i]);
    }
}
""", name="add_tanh")

THREADS = 256


class ModelNew(nn.Module):
    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # The kernel indexes flat memory, so inputs must be dense and row-major.
        a = a.contiguous()
        b = b.contiguous()
        y = torch.empty_like(a)
        n = a.numel()
        if n:
            blocks = min((n + THREADS - 1) // THREADS, 65535)
            # kernel(grid, block, *args): tensors pass as device pointers (device, dtype and contiguity
            # are checked), Python numbers as the parameter's C type (long long, float).
            _mod.add_tanh(blocks, THREADS, a, b, y, n, float(self.alpha))
        return y
'''
