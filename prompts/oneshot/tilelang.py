# One-shot example for the tilelang backend: a KernelBench problem and a correct candidate for it.
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

SOLUTION = r'''import tilelang
import tilelang.language as T
import torch
import torch.nn as nn


# A factory: shapes and tile sizes are Python values, so TileLang compiles one kernel per distinct call and caches it.
# out_idx=[2] makes the compiled kernel allocate C and return it. Autotuning is off where the tools run: sizes are fixed.
@tilelang.jit(out_idx=[2])
def gated_matmul(m: int, n: int, k: int, scale: float, block_m: int = 64, block_n: int = 64, block_k: int = 32):
    @T.prim_func
    def main(A: T.Tensor((m, k), "float32"), B: T.Tensor((k, n), "float32"), C: T.Tensor((m, n), "float32")):
        with T.Kernel(T.ceildiv(n, block_n), T.ceildiv(m, block_m), threads=256) as (bx, by):
            a_tile = T.alloc_shared((block_m, block_k), "float32")
            b_tile = T.alloc_shared((block_k, block_n), "float32")
            acc = T.alloc_fragment((block_m, block_n), "float32")
            T.clear(acc)
            # T.gemm on float32 operands would run in TF32, which the strict policy refuses: fp32 FMAs on shared tiles instead.
            for ko in T.Pipelined(T.ceildiv(k, block_k), num_stages=2):
                T.copy(A[by * block_m, ko * block_k], a_tile)
                T.copy(B[ko * block_k, bx * block_n], b_tile)
                for kk in T.serial(block_k):
                    for i, j in T.Parallel(block_m, block_n):
                        acc[i, j] += a_tile[i, kk] * b_tile[kk, j]
            # The epilogue is fused: the product never goes back to memory before the sigmoid. Ragged edges are masked by TileLang.
            for i, j in T.Parallel(block_m, block_n):
                acc[i, j] = scale / (T.float32(1) + T.exp(-acc[i, j]))
            T.copy(acc, C[by * block_m, bx * block_n])

    return main


class ModelNew(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.contiguous(), b.contiguous()
        kernel = gated_matmul(a.shape[0], b.shape[1], a.shape[1], float(self.scale))
        return kernel(a, b)
'''
