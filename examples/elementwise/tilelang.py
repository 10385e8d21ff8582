import tilelang
import tilelang.language as T
import torch
import torch.nn as nn


# One flat pass: each block streams 1024 elements with 256 threads (4 per thread, vectorised by TileLang).
# Compiled once per (n, scale) and cached; out_idx=[1] makes the kernel allocate and return Y.
@tilelang.jit(out_idx=[1])
def swish_scale(n: int, scale: float, block: int = 1024, threads: int = 256):
    @T.prim_func
    def main(X: T.Tensor((n,), "float32"), Y: T.Tensor((n,), "float32")):
        with T.Kernel(T.ceildiv(n, block), threads=threads) as bx:
            for i in T.Parallel(block):
                v = X[bx * block + i]
                # x * sigmoid(x) * scale, with sigmoid as 1 / (1 + exp(-x)) in fp32 (exp, not the approximate __expf).
                Y[bx * block + i] = v / (T.float32(1) + T.exp(-v)) * scale

    return main


class ModelNew(nn.Module):
    def __init__(self, scale_factor: float):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The kernel walks flat memory: a dense row-major view of any shape.
        flat = x.contiguous().view(-1)
        kernel = swish_scale(flat.numel(), float(self.scale_factor))
        return kernel(flat).view_as(x)
