import torch
import torch.nn as nn

from kfoundry.backends.cuda import load_cuda

# Compiled once at import by NVRTC (cached by content hash), not on every forward call.
_mod = load_cuda(r"""
extern "C" __global__ void swish_scale(const float* __restrict__ x, float* __restrict__ y, long long n, float scale) {
    // Grid-stride loop: any grid covers any n. One fused pass: read x once, write y once
    // (the reference makes three passes over memory).
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) {
        const float v = x[i];
        // expf(-v) overflows to inf for v < -88; v / inf gives -0, which is the right limit.
        y[i] = v / (1.0f + expf(-v)) * scale;
    }
}
""", name="swish_scale")

THREADS = 256


class ModelNew(nn.Module):
    def __init__(self, scale_factor: float):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        n = x.numel()
        if n:
            blocks = min((n + THREADS - 1) // THREADS, 65535)
            # Tensors pass as device pointers (device, dtype and contiguity are checked), numbers as C scalars.
            _mod.swish_scale(blocks, THREADS, x, y, n, float(self.scale_factor))
        return y
