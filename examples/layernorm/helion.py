import helion
import helion.language as hl
import torch
import torch.nn as nn


# A few rows per program; each row's mean and variance come from one read of it.
@helion.kernel(config=helion.Config(block_sizes=[4], num_warps=8))
def layer_norm_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    rows, _ = x.size()
    out = torch.empty_like(x)
    for tile_r in hl.tile(rows):
        row = x[tile_r, :]
        mean = torch.mean(row, dim=-1, keepdim=True)
        centered = row - mean
        # Two-pass variance (of the centred row): no cancellation when the mean is large.
        var = torch.mean(centered * centered, dim=-1, keepdim=True)
        out[tile_r, :] = centered * torch.rsqrt(var + eps) * weight[None, :] + bias[None, :]
    return out


class ModelNew(nn.Module):
    def __init__(self, normalized_shape: int, eps: float):
        super().__init__()
        # Same module path as the reference (ln.weight / ln.bias), so its parameters load by name.
        self.ln = nn.LayerNorm(normalized_shape, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = x.shape[-1]
        rows = x.contiguous().view(-1, hidden)
        return layer_norm_rows(rows, self.ln.weight, self.ln.bias, float(self.ln.eps)).view_as(x)
