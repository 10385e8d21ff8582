import helion
import helion.language as hl
import torch
import torch.nn as nn


# x seen as (outer, reduced, inner): each program owns a strip of inner lanes, contiguous in memory,
# and walks the reduced dimension in chunks, accumulating in fp32.
@helion.kernel(config=helion.Config(block_sizes=[1, 128, 32], num_warps=4))
def sum_middle(x: torch.Tensor) -> torch.Tensor:
    outer, reduced, inner = x.size()
    out = torch.empty([outer, inner], dtype=x.dtype, device=x.device)
    for tile_o, tile_i in hl.tile([outer, inner]):
        acc = hl.zeros([tile_o, tile_i], dtype=torch.float32)
        for tile_r in hl.tile(reduced):
            acc = acc + torch.sum(x[tile_o, tile_r, tile_i], dim=1)
        out[tile_o, tile_i] = acc.to(x.dtype)
    return out


class ModelNew(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.dim % x.dim()
        outer = 1
        for size in x.shape[:dim]:
            outer *= size
        inner = 1
        for size in x.shape[dim + 1 :]:
            inner *= size
        shape = list(x.shape)
        shape[dim] = 1
        return sum_middle(x.contiguous().view(outer, x.shape[dim], inner)).view(shape)
