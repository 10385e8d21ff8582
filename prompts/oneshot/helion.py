# One-shot example for the helion backend: a KernelBench problem and a correct candidate for it.
# Read as data by kfoundry.prompts.oneshot (parsed with ast, never imported).

REFERENCE = '''import torch
import torch.nn as nn


class Model(nn.Module):
    """A scaled, gated product: y = sigmoid(a @ b) * scale."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(a @ b) * self.scale


m = 128
k = 256
n = 192
scale = 2.0


def get_inputs():
    return [torch.randn(m, k), torch.randn(k, n)]


def get_init_inputs():
    return [scale]
'''

SOLUTION = r'''import helion
import helion.language as hl
import torch
import torch.nn as nn


# A fixed config: autotuning is off where the tools run, and this one suits both sizes of tile loop below.
# dot_precision="ieee" keeps fp32 products in fp32, as the strict policy requires (Helion's default is TF32).
@helion.kernel(config=helion.Config(block_sizes=[64, 64, 32], num_warps=4, num_stages=3), dot_precision="ieee")
def gated_matmul(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    m, k = a.size()
    _, n = b.size()
    # Host code: runs once per call, allocates on the inputs' device (never hard-code "cuda").
    out = torch.empty([m, n], dtype=a.dtype, device=a.device)
    # Device code: each (tile_m, tile_n) is one program; the k loop accumulates in fp32 registers.
    for tile_m, tile_n in hl.tile([m, n]):
        acc = hl.zeros([tile_m, tile_n], dtype=torch.float32)
        for tile_k in hl.tile(k):
            acc = torch.addmm(acc, a[tile_m, tile_k], b[tile_k, tile_n])
        # The epilogue is fused: the product never goes back to memory before the sigmoid.
        out[tile_m, tile_n] = torch.sigmoid(acc) * scale
    return out


class ModelNew(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return gated_matmul(a.contiguous(), b.contiguous(), float(self.scale))
'''
