import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _sum_dim_kernel(x_ptr, out_ptr, r, inner, BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    # x is viewed as (outer, r, inner); program (o, j) sums a BLOCK_I-wide strip of slice o.
    o = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    col_ok = cols < inner
    base = x_ptr + o * r * inner
    acc = tl.zeros((BLOCK_I,), dtype=tl.float32)
    for r0 in range(0, r, BLOCK_R):
        ks = r0 + tl.arange(0, BLOCK_R)
        # Tiles are read row-major along `inner`, so neighbouring lanes load neighbouring addresses.
        tile = tl.load(base + ks[:, None] * inner + cols[None, :], mask=(ks[:, None] < r) & col_ok[None, :], other=0.0)
        acc += tl.sum(tile, axis=0)
    tl.store(out_ptr + o * inner + cols, acc, mask=col_ok)


class ModelNew(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        dim = self.dim % x.dim()
        outer = 1
        for size in x.shape[:dim]:
            outer *= size
        inner = 1
        for size in x.shape[dim + 1 :]:
            inner *= size
        shape = list(x.shape)
        shape[dim] = 1
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
        block_i = min(128, triton.next_power_of_2(inner))
        _sum_dim_kernel[(outer, triton.cdiv(inner, block_i))](x, out, x.shape[dim], inner, BLOCK_R=32, BLOCK_I=block_i)
        return out
