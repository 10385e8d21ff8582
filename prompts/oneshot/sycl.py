# One-shot example for the sycl backend (load_inline(sycl_sources=...) as PyTorch XPU builds it): a KernelBench problem and a correct candidate for it.
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
from torch.utils.cpp_extension import load_inline

CPP_SOURCE = "torch::Tensor add_tanh(torch::Tensor a, torch::Tensor b, double alpha);"

SYCL_SOURCE = r"""
#include <c10/xpu/XPUStream.h>

torch::Tensor add_tanh(torch::Tensor a, torch::Tensor b, double alpha) {
    TORCH_CHECK(a.is_contiguous() && b.is_contiguous(), "inputs must be contiguous");
    auto y = torch::empty_like(a);
    const size_t n = a.numel();
    if (n == 0) return y;
    const float* pa = a.data_ptr<float>();
    const float* pb = b.data_ptr<float>();
    float* py = y.data_ptr<float>();
    const float al = (float)alpha;
    // Work-groups of 256 (a multiple of the 16/32-wide sub-groups); the range is rounded up and the tail guarded.
    const size_t local = 256;
    const size_t global = (n + local - 1) / local * local;
    sycl::queue& q = c10::xpu::getCurrentXPUStream().queue();
    q.parallel_for(sycl::nd_range<1>(global, local), [=](sycl::nd_item<1> it) {
        const size_t i = it.get_global_id(0);
        if (i < n) py[i] = sycl::tanh(pa[i] + al * pb[i]);
    });
    return y;
}
"""

# Compiled once when the module is imported (icpx -fsycl through PyTorch XPU's extension builder).
_ext = load_inline(name="add_tanh_sycl", cpp_sources=CPP_SOURCE, sycl_sources=SYCL_SOURCE, functions=["add_tanh"])


class ModelNew(nn.Module):
    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _ext.add_tanh(a.contiguous(), b.contiguous(), float(self.alpha))
'''
