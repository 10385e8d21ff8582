import helion
import helion.language as hl
import torch
import torch.nn as nn


# A few rows per program: the mean square and the scaling share one read of each row.
@helion.kernel(config=helion.Config(block_sizes=[4], num_warps=8))
def rms_norm_rows(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    rows, _ = x.size()
    out = torch.empty_like(x)
    for tile_r in hl.tile(rows):
        row = x[tile_r, :]
        inv = torch.rsqrt(torch.mean(row * row, dim=-1, keepdim=True) + eps)
        out[tile_r, :] = row * inv * weight[None, :]
    return out


class ModelNew(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.contiguous().view(-1, x.shape[-1])
        return rms_norm_rows(rows, self.weight, float(self.eps)).view_as(x)
