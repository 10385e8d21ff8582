import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _swish_columns_kernel(x_ptr, y_ptr, n_rows, n_cols, BLOCK: tl.constexpr):
    # Each program walks BLOCK rows of one column: neighbouring lanes touch addresses n_cols floats apart.
    col = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < n_rows
    offs = rows.to(tl.int64) * n_cols + col
    x = tl.load(x_ptr + offs, mask=ok)
    tl.store(y_ptr + offs, x * tl.sigmoid(x) * 1.75, mask=ok)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        rows, cols = x.shape
        y = torch.empty_like(x)
        _swish_columns_kernel[(triton.cdiv(rows, 1024), cols)](x, y, rows, cols, BLOCK=1024, num_warps=4)
        return y
