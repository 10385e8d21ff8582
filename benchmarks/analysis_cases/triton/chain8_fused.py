import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _chain_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    # All eight steps in registers: one read, one write, one launch.
    v = tl.load(x_ptr + offs, mask=ok) * 1.5 + 0.25
    v = tl.maximum(v, 0.0)
    v = tl.abs(v * v - 0.5)
    tl.store(y_ptr + offs, v * 0.75 + 1.0, mask=ok)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        n = x.numel()
        _chain_kernel[(triton.cdiv(n, 1024),)](x, y, n, BLOCK=1024)
        return y
