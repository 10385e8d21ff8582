# One-shot example for the triton backend: a KernelBench problem and a correct candidate for it.
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
import triton
import triton.language as tl


@triton.jit
def _add_tanh_kernel(a_ptr, b_ptr, y_ptr, n, alpha, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    # The last block runs past n unless n is a multiple of BLOCK.
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0.0)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0)
    s = a + alpha * b
    # tanh from exp(-2|s|), which lies in (0, 1]: no overflow for large |s|, and no
    # libdevice call, so the same kernel also runs under TRITON_INTERPRET=1.
    t = tl.exp(-2.0 * tl.abs(s))
    r = (1.0 - t) / (1.0 + t)
    tl.store(y_ptr + offs, tl.where(s >= 0, r, -r), mask=mask)


class ModelNew(nn.Module):
    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # The kernel indexes flat memory, so inputs must be dense and row-major.
        a = a.contiguous()
        b = b.contiguous()
        # empty_like keeps the inputs' device; never hard-code "cuda": the same module runs on CPU tensors
        # under TRITON_INTERPRET=1.
        y = torch.empty_like(a)
        n = a.numel()
        block = 1024
        _add_tanh_kernel[(triton.cdiv(n, block),)](a, b, y, n, float(self.alpha), BLOCK=block)
        return y
'''
