import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import torch
import torch.nn as nn
from cutlass.cute.runtime import from_dlpack

THREADS = 256
# Four fp32 values per thread: one 16-byte load and one 16-byte store each.
VECTOR = 4


@cute.kernel
def swish_kernel(gX: cute.Tensor, gY: cute.Tensor, scale: cutlass.Float32):
    tidx, _, _ = cute.arch.thread_idx()
    bidx, _, _ = cute.arch.block_idx()
    bdim, _, _ = cute.arch.block_dim()
    i = bidx * bdim + tidx
    rows, cols = gX.shape[1]
    # The last block may run past the end: its spare threads do nothing.
    if i < rows * cols:
        coord = (None, (i // cols, i % cols))
        v = gX[coord].load()
        gY[coord] = v * (1.0 / (1.0 + cute.math.exp(-v))) * scale


@cute.jit
def swish(mX: cute.Tensor, mY: cute.Tensor, scale: cutlass.Float32, stream: cuda.CUstream):
    # ((1, VECTOR), (rows, 1)): mode 0 is one thread's vector, mode 1 enumerates the vectors.
    gX = cute.zipped_divide(mX, (1, VECTOR))
    gY = cute.zipped_divide(mY, (1, VECTOR))
    vectors = cute.size(gX, mode=[1])
    swish_kernel(gX, gY, scale).launch(
        grid=[(vectors + THREADS - 1) // THREADS, 1, 1],
        block=[THREADS, 1, 1],
        stream=stream,
    )


class ModelNew(nn.Module):
    def __init__(self, scale_factor: float):
        super().__init__()
        self.scale_factor = scale_factor
        # One compiled function per input size: the layouts are static, so the compiler sees every stride.
        self.compiled = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() % VECTOR:
            raise ValueError(f"this kernel moves {VECTOR} values per thread; got {x.numel()} elements")
        # A dense row-major (n/4, 4) view of any shape: each row is one thread's vector.
        flat = x.contiguous().view(-1, VECTOR)
        out = torch.empty_like(flat)
        x_, out_ = from_dlpack(flat, assumed_align=16), from_dlpack(out, assumed_align=16)
        # The torch stream, so the launch orders with torch's work, CUDA graphs and the profiler.
        stream = cuda.CUstream(torch.cuda.current_stream().cuda_stream)
        scale = float(self.scale_factor)
        key = tuple(flat.shape)
        if key not in self.compiled:
            self.compiled[key] = cute.compile(swish, x_, out_, scale, stream)
        self.compiled[key](x_, out_, scale, stream)
        return out.view_as(x)
