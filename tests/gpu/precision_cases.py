"""A KernelBench-L2-style GEMM + epilogue sized for a GPU, and Triton candidates at three precisions.

relu(x @ W^T + b) for x 1024x8192 and an nn.Linear(8192, 8192): ~137 GFLOP, a few ms in
strict fp32 on an H100/H200, where the epilogue is noise and the GEMM's precision decides.
"""

from __future__ import annotations

REFERENCE = '''\
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.gemm = nn.Linear(in_features, out_features)

    def forward(self, x):
        return torch.relu(self.gemm(x))


batch_size = 1024
in_features = 8192
out_features = 8192


def get_inputs():
    return [torch.randn(batch_size, in_features)]


def get_init_inputs():
    return [in_features, out_features]
'''

_TEMPLATE = '''\
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _linear_relu(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, sxm, sxk, swn, swk, sym, syn,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        a = tl.load(x_ptr + offs_m[:, None] * sxm + kk[None, :] * sxk, mask=(offs_m[:, None] < M) & (kk[None, :] < K), other=0.0)
        # W is (N, K) as nn.Linear stores it: this tile is W^T's (K, N) block.
        b = tl.load(w_ptr + offs_n[None, :] * swn + kk[:, None] * swk, mask=(offs_n[None, :] < N) & (kk[:, None] < K), other=0.0)
        {dot}
    bias = tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0)
    y = tl.maximum(acc + bias[None, :], 0.0)
    tl.store(y_ptr + offs_m[:, None] * sym + offs_n[None, :] * syn, y, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.gemm = nn.Linear(in_features, out_features)

    def forward(self, x):
        x = x.contiguous()
        w = self.gemm.weight
        m, k = x.shape
        n = w.shape[0]
        y = torch.empty(m, n, device=x.device, dtype=torch.float32)
        grid = (triton.cdiv(m, 128), triton.cdiv(n, 128))
        _linear_relu[grid](x, w, self.gemm.bias, y, m, n, k, x.stride(0), x.stride(1), w.stride(0), w.stride(1),
                           y.stride(0), y.stride(1), BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3)
        return y
'''

#: policy -> a candidate written for it: fp32 FMA dot, TF32 tensor cores, bf16 operands with fp32 accumulation;
#: "tf32x3" is written for strict: three TF32 products (hi*hi + hi*lo + lo*hi) that recover fp32's accuracy on tensor cores
CANDIDATES: dict[str, str] = {
    "strict": _TEMPLATE.replace("{dot}", 'acc = tl.dot(a, b, acc, input_precision="ieee")'),
    "tf32x3": _TEMPLATE.replace("{dot}", 'acc = tl.dot(a, b, acc, input_precision="tf32x3")'),
    "tf32": _TEMPLATE.replace("{dot}", 'acc = tl.dot(a, b, acc, input_precision="tf32")'),
    "bf16": _TEMPLATE.replace("{dot}", "acc = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)"),
}
