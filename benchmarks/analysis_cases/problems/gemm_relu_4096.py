import torch
import torch.nn as nn


class Model(nn.Module):
    """Linear layer with a ReLU epilogue at GPU size: y = relu(x @ W^T + b), 4096 x 4096 x 4096 in fp32."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


batch_size = 4096
in_features = 4096
out_features = 4096


def get_inputs():
    return [torch.randn(batch_size, in_features)]


def get_init_inputs():
    return [in_features, out_features]
