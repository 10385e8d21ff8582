import math

import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _linear_relu_bf16(
    x_ptr, w_ptr, b_ptr, y_ptr, M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped launch order: programs that run together share rows of x and columns of W^T in L2.
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * grid_n)
    first_m = group * GROUP_M
    size_m = min(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * grid_n)) % size_m
    pid_n = (pid % (GROUP_M * grid_n)) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + rk
        a = tl.load(x_ptr + rm[:, None] * stride_xm + ks[None, :] * stride_xk, mask=(rm[:, None] < M) & (ks[None, :] < K), other=0.0)
        b = tl.load(w_ptr + ks[:, None] * stride_wk + rn[None, :] * stride_wn, mask=(ks[:, None] < K) & (rn[None, :] < N), other=0.0)
        # bf16 operands on the tensor cores, fp32 accumulation: what the bf16 policy allows.
        acc = tl.dot(a, b, acc)
    bias = tl.load(b_ptr + rn, mask=rn < N, other=0.0)
    y = tl.maximum(acc + bias[None, :].to(tl.float32), 0.0)
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :] * stride_yn, y, mask=(rm[:, None] < M) & (rn[None, :] < N))


class _LinearParams(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
        nn.init.uniform_(self.bias, -bound, bound)


class ModelNew(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = _LinearParams(in_features, out_features)
        self._packed: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        # The weights are rounded to bf16 once and reused while they are unchanged (their version counter).
        w = self.linear.weight
        key = w._version
        if self._packed is None or self._packed[0] != key or self._packed[1].device != w.device:
            self._packed = (key, w.detach().to(torch.bfloat16), self.linear.bias.detach().to(torch.bfloat16))
        return self._packed[1], self._packed[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._weights()
        xb = x.to(torch.bfloat16)
        m, k = xb.shape
        n = w.shape[0]
        # The problem's output dtype (fp32): the policy rounds operands, not the result.
        y = torch.empty(m, n, dtype=x.dtype, device=x.device)
        bm, bn, bk = 128, 128, 64
        grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
        _linear_relu_bf16[grid](
            xb, w, b, y, m, n, k, xb.stride(0), xb.stride(1), w.stride(0), w.stride(1), y.stride(0), y.stride(1),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=8, num_stages=4,
        )
        return y
