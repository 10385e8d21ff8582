import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, y_ptr, n_rows, n_cols, eps, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    col_ok = cols < n_cols
    mask = (rows < n_rows)[:, None] & col_ok[None, :]
    offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
    # Padding loads 0, which adds nothing to the sum of squares.
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0)
    tl.store(y_ptr + offs, x * inv[:, None] * w[None, :], mask=mask)


def _warps(block: int) -> int:
    return max(4, min(16, block // 512))


class ModelNew(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        n_cols = x.shape[-1]
        n_rows = x.numel() // n_cols
        block = triton.next_power_of_2(n_cols)
        rows = max(1, min(16, 8192 // block))
        # Long rows: more warps share a row, so each thread holds a few dozen values rather than hundreds (no spills).
        _rmsnorm_kernel[(triton.cdiv(n_rows, rows),)](x, self.weight, y, n_rows, n_cols, float(self.eps), ROWS=rows, BLOCK=block, num_warps=_warps(block))
        return y
