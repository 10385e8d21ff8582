import helion
import helion.language as hl
import torch
import torch.nn as nn


# One row per program: the max, the sum and the rescale all read the row from registers, not memory.
@helion.kernel(config=helion.Config(block_sizes=[1], num_warps=8))
def softmax_rows(x: torch.Tensor) -> torch.Tensor:
    rows, _ = x.size()
    out = torch.empty_like(x)
    for tile_r in hl.tile(rows):
        values = x[tile_r, :]
        # Subtracting the row max keeps exp() finite for large logits.
        shifted = torch.exp(values - torch.amax(values, dim=1, keepdim=True))
        out[tile_r, :] = shifted / torch.sum(shifted, dim=1, keepdim=True)
    return out


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softmax_rows(x.contiguous())
