import torch
import torch.nn as nn


class Model(nn.Module):
    """LayerNorm over the last dimension with a learnable weight and bias."""

    def __init__(self, normalized_shape: int, eps: float):
        super().__init__()
        self.ln = nn.LayerNorm(normalized_shape, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x)


batch_size = 32
seq_len = 1024
hidden = 4096
eps = 1e-5


def get_inputs():
    return [torch.randn(batch_size, seq_len, hidden)]


def get_init_inputs():
    return [hidden, eps]
