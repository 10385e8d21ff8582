import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# load_inline prepends <torch/types.h>, <cuda.h> and <cuda_runtime.h> to cuda_sources.
cuda_source = r"""
// x viewed as (outer, r, inner); out is (outer, inner). One thread per output: neighbouring threads
// read neighbouring `inner` elements, so every step over the reduced dim is a coalesced load.
__global__ void sum_dim_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t outer, int64_t r, int64_t inner) {
    const int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (idx >= outer * inner) return;
    const int64_t o = idx / inner, i = idx % inner;
    const float* p = x + o * r * inner + i;
    // A double accumulator keeps long sums exact enough whatever the order.
    double acc = 0.0;
    for (int64_t k = 0; k < r; ++k) acc += p[k * inner];
    out[idx] = static_cast<float>(acc);
}

// `stream` is torch.cuda.current_stream().cuda_stream, so the kernel is ordered with torch's own work.
torch::Tensor sum_dim(torch::Tensor x, int64_t dim, int64_t stream) {
    TORCH_CHECK(x.is_cuda() && x.scalar_type() == torch::kFloat32, "x must be a float32 CUDA tensor");
    auto xc = x.contiguous();
    const int64_t nd = xc.dim();
    dim = dim < 0 ? dim + nd : dim;
    TORCH_CHECK(dim >= 0 && dim < nd, "dim out of range");
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < dim; ++d) outer *= xc.size(d);
    for (int64_t d = dim + 1; d < nd; ++d) inner *= xc.size(d);
    auto sizes = xc.sizes().vec();
    const int64_t r = sizes[dim];
    sizes[dim] = 1;
    auto out = torch::empty(sizes, xc.options());
    const int64_t total = outer * inner;
    if (total == 0) return out;
    const int threads = 256;
    const int64_t blocks = (total + threads - 1) / threads;
    sum_dim_kernel<<<static_cast<unsigned>(blocks), threads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        xc.data_ptr<float>(), out.data_ptr<float>(), outer, r, inner);
    const cudaError_t err = cudaGetLastError();
    TORCH_CHECK(err == cudaSuccess, "sum_dim_kernel launch failed: ", cudaGetErrorString(err));
    return out;
}
"""

cpp_source = "torch::Tensor sum_dim(torch::Tensor x, int64_t dim, int64_t stream);"

reduction = load_inline(
    name="sum_dim",
    cpp_sources=cpp_source,
    cuda_sources=cuda_source,
    functions=["sum_dim"],
    verbose=False,
)


class ModelNew(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reduction.sum_dim(x, self.dim, torch.cuda.current_stream(x.device).cuda_stream)
