# One-shot example for the hip backend (KernelBench's HIP shape: load_inline with CXX=hipcc): a KernelBench problem and a correct candidate for it.
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

SOLUTION = r'''import os

import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# ROCm PyTorch builds the extension with hipcc; KernelBench's HIP harness expects this line.
os.environ["CXX"] = "hipcc"

HIP_SOURCE = r"""
#include <hip/hip_runtime.h>

__global__ void add_tanh_kernel(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                                float alpha, long long n) {
    // One fused pass over memory; a grid-stride loop covers any n, 64-bit indices stay safe past 2^31.
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = tanhf(a[i] + alpha * b[i]);
    }
}

torch::Tensor add_tanh(torch::Tensor a, torch::Tensor b, double alpha) {
    TORCH_CHECK(a.is_contiguous() && b.is_contiguous(), "inputs must be contiguous");
    auto y = torch::empty_like(a);
    const long long n = a.numel();
    if (n == 0) return y;
    // 256 threads = four 64-lane wavefronts per block on CDNA.
    const int threads = 256;
    const long long blocks = std::min<long long>((n + threads - 1) / threads, 65535);
    hipLaunchKernelGGL(add_tanh_kernel, dim3(blocks), dim3(threads), 0, 0,
                       a.data_ptr<float>(), b.data_ptr<float>(), y.data_ptr<float>(), (float)alpha, n);
    return y;
}
"""

# Compiled once when the module is imported, not on every forward call.
_ext = load_inline(name="add_tanh_hip", cpp_sources=HIP_SOURCE, functions=["add_tanh"])


class ModelNew(nn.Module):
    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _ext.add_tanh(a.contiguous(), b.contiguous(), float(self.alpha))
'''
