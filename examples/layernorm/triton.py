import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _layernorm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, n_rows, n_cols, eps, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    mean = tl.sum(x, axis=1) / n_cols
    # Padding columns must not add (0 - mean)^2 to the variance.
    d = tl.where(mask, x - mean[:, None], 0.0)
    # Biased variance, as nn.LayerNorm uses; centred squares avoid E[x^2] - E[x]^2 cancellation.
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0)
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0)
    y = d * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + offs, y, mask=mask)


class _Affine(nn.Module):
    """Holds the weight and bias under the names nn.LayerNorm uses, so the reference's state_dict loads."""

    def __init__(self, normalized_shape: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))


def _warps(block: int) -> int:
    return max(4, min(16, block // 512))


class ModelNew(nn.Module):
    def __init__(self, normalized_shape: int, eps: float):
        super().__init__()
        self.ln = _Affine(normalized_shape, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        n_cols = x.shape[-1]
        n_rows = x.numel() // n_cols
        block = triton.next_power_of_2(n_cols)
        rows = max(1, min(16, 8192 // block))
        _layernorm_kernel[(triton.cdiv(n_rows, rows),)](
            x, self.ln.weight, self.ln.bias, y, n_rows, n_cols, float(self.ln.eps), ROWS=rows, BLOCK=block,
            # Long rows: more warps share a row, so each thread holds a few dozen values rather than hundreds (no spills).
            num_warps=_warps(block),
        )
        return y
