import helion
import helion.language as hl
import torch
import torch.nn as nn


# One flat pass: 1024 elements per program keeps a GPU streaming; the same config runs interpreted on CPU tensors.
@helion.kernel(config=helion.Config(block_sizes=[1024], num_warps=4))
def swish_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    out = torch.empty_like(x)
    for tile in hl.tile(x.numel()):
        v = x[tile]
        out[tile] = v * torch.sigmoid(v) * scale
    return out


class ModelNew(nn.Module):
    def __init__(self, scale_factor: float):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The kernel walks flat memory: a dense row-major view of any shape.
        flat = x.contiguous().view(-1)
        return swish_scale(flat, float(self.scale_factor)).view_as(x)
