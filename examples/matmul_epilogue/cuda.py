import math

import torch
import torch.nn as nn

from kfoundry.backends.cuda import load_cuda

_mod = load_cuda(r"""
#define TILE 32  // outputs per block side
#define BK 32    // depth of one shared-memory step

// y = relu(x @ w^T + b) for x (m, k), w (n, k) as nn.Linear stores it, y (m, n); all fp32.
// A block computes a 32x32 tile of y; its 16x16 threads each own a 2x2 patch at rows ty + 16*i and
// columns tx + 16*j, so a warp's stores cover 16 consecutive floats. Bias and ReLU are applied in
// registers before the only store: the product never makes a round trip to memory.
extern "C" __global__ void __launch_bounds__(256) linear_bias_relu(const float* __restrict__ x, const float* __restrict__ w,
                                                                  const float* __restrict__ b, float* __restrict__ y,
                                                                  int m, int n, int k) {
    // Stored k-major (xs[kk][r]) so the inner loop reads one row of each; +1 pads away bank conflicts.
    __shared__ float xs[BK][TILE + 1];
    __shared__ float ws[BK][TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    const int row0 = blockIdx.y * TILE, col0 = blockIdx.x * TILE;
    float acc00 = 0.0f, acc01 = 0.0f, acc10 = 0.0f, acc11 = 0.0f;

    for (int k0 = 0; k0 < k; k0 += BK) {
        // Consecutive threads load consecutive k of one row: coalesced; out-of-range elements load 0.
        for (int e = tid; e < TILE * BK; e += 256) {
            const int r = e / BK, kk = e % BK, gk = k0 + kk;
            const int gr = row0 + r, gc = col0 + r;
            xs[kk][r] = (gr < m && gk < k) ? x[(long long)gr * k + gk] : 0.0f;
            ws[kk][r] = (gc < n && gk < k) ? w[(long long)gc * k + gk] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            const float a0 = xs[kk][ty], a1 = xs[kk][ty + 16];
            const float b0 = ws[kk][tx], b1 = ws[kk][tx + 16];
            acc00 += a0 * b0;
            acc01 += a0 * b1;
            acc10 += a1 * b0;
            acc11 += a1 * b1;
        }
        __syncthreads();
    }

    const float acc[2][2] = {{acc00, acc01}, {acc10, acc11}};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int row = row0 + ty + 16 * i;
        if (row >= m) continue;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int col = col0 + tx + 16 * j;
            if (col >= n) continue;
            const float v = acc[i][j] + b[col];
            y[(long long)row * n + col] = v < 0.0f ? 0.0f : v;  // relu; NaN passes through as in torch
        }
    }
}
""", name="linear_bias_relu")

TILE = 32


class _LinearParams(nn.Module):
    """nn.Linear's parameters, names and initialisation without its forward."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        # Same draws in the same order as nn.Linear.reset_parameters, so building under the
        # reference's seed gives identical values even when the state_dict is not copied.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
        nn.init.uniform_(self.bias, -bound, bound)


class ModelNew(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = _LinearParams(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        w = self.linear.weight.contiguous()
        m, k = x.shape
        n = w.shape[0]
        y = torch.empty(m, n, dtype=x.dtype, device=x.device)
        if m and n:
            grid = ((n + TILE - 1) // TILE, (m + TILE - 1) // TILE)
            _mod.linear_bias_relu(grid, (16, 16), x, w, self.linear.bias.contiguous(), y, m, n, k)
        return y
