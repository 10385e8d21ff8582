import torch
import torch.nn as nn


class Model(nn.Module):
    """Scaled Swish (SiLU): y = x * sigmoid(x) * scale_factor."""

    def __init__(self, scale_factor: float):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x) * self.scale_factor


batch_size = 4096
dim = 32768
scale_factor = 1.75


def get_inputs():
    return [torch.randn(batch_size, dim)]


def get_init_inputs():
    return [scale_factor]
