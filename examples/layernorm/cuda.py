import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# KernelBench style: a CUDA kernel plus a C++ wrapper taking torch tensors, built by load_inline.
cuda_source = r"""
#include <torch/extension.h>
#include <cuda_runtime.h>

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = warp_sum(lane < warps ? scratch[lane] : 0.0f);
    __syncthreads();
    return v;
}

// One block per row. Two passes (mean, then centred squares) avoid the cancellation of E[x^2] - E[x]^2.
__global__ void layernorm_rows_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                                      float* __restrict__ y, int cols, float eps) {
    __shared__ float scratch[32];
    const float* xr = x + (int64_t)blockIdx.x * cols;
    float* yr = y + (int64_t)blockIdx.x * cols;

    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
    const float mean = block_sum(s, scratch) / cols;

    float sq = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = xr[c] - mean;
        sq += d * d;
    }
    // Biased variance, as nn.LayerNorm uses.
    const float rstd = 1.0f / sqrtf(block_sum(sq, scratch) / cols + eps);

    for (int c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = (xr[c] - mean) * rstd * w[c] + b[c];
}

// `stream` is torch.cuda.current_stream().cuda_stream, passed from Python: launching on it (rather than on
// the legacy default stream) keeps the kernel ordered with the work torch queued for its inputs.
torch::Tensor layernorm_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, double eps, int64_t stream) {
    TORCH_CHECK(x.is_cuda() && x.scalar_type() == torch::kFloat32, "x must be a float32 CUDA tensor");
    auto xc = x.contiguous();
    auto wc = weight.contiguous();
    auto bc = bias.contiguous();
    auto y = torch::empty_like(xc);
    const int cols = static_cast<int>(xc.size(-1));
    const int64_t rows = cols ? xc.numel() / cols : 0;
    if (rows == 0) return y;
    layernorm_rows_kernel<<<static_cast<unsigned>(rows), 256, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        xc.data_ptr<float>(), wc.data_ptr<float>(), bc.data_ptr<float>(), y.data_ptr<float>(), cols, static_cast<float>(eps));
    const cudaError_t err = cudaGetLastError();
    TORCH_CHECK(err == cudaSuccess, "layernorm_rows_kernel launch failed: ", cudaGetErrorString(err));
    return y;
}
"""

cpp_source = "torch::Tensor layernorm_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, double eps, int64_t stream);"

layernorm = load_inline(
    name="layernorm_rows",
    cpp_sources=cpp_source,
    cuda_sources=cuda_source,
    functions=["layernorm_forward"],
    extra_cuda_cflags=["-O3"],
    verbose=False,
)


class _Affine(nn.Module):
    """Holds the weight and bias under the names nn.LayerNorm uses, so the reference's state_dict loads."""

    def __init__(self, normalized_shape: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))


class ModelNew(nn.Module):
    def __init__(self, normalized_shape: int, eps: float):
        super().__init__()
        self.ln = _Affine(normalized_shape, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stream = torch.cuda.current_stream(x.device).cuda_stream
        return layernorm.layernorm_forward(x, self.ln.weight, self.ln.bias, float(self.ln.eps), stream)
