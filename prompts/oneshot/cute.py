# One-shot example for the cute backend: a KernelBench problem and a correct candidate for it.
# Read as data by kfoundry.prompts.oneshot (parsed with ast, never imported).

REFERENCE = '''import torch
import torch.nn as nn


class Model(nn.Module):
    """tanh of a scaled sum: y = tanh(a + alpha * b)."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.tanh(a + self.alpha * b)


batch_size = 128
dim = 1024
alpha = 0.5


def get_inputs():
    return [torch.randn(batch_size, dim), torch.randn(batch_size, dim)]


def get_init_inputs():
    return [alpha]
'''

SOLUTION = r'''import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import torch
import torch.nn as nn
from cutlass.cute.runtime import from_dlpack

THREADS = 256
# Four fp32 values per thread: 16-byte loads and stores.
VECTOR = 4


# Device code: one thread per 4-element vector; the tensors arrive already tiled by the host function.
@cute.kernel
def add_tanh_kernel(gA: cute.Tensor, gB: cute.Tensor, gY: cute.Tensor, alpha: cutlass.Float32):
    tidx, _, _ = cute.arch.thread_idx()
    bidx, _, _ = cute.arch.block_idx()
    bdim, _, _ = cute.arch.block_dim()
    i = bidx * bdim + tidx
    rows, cols = gA.shape[1]
    if i < rows * cols:  # the last block's spare threads do nothing
        coord = (None, (i // cols, i % cols))
        # .load() reads a whole vector into registers; the math runs elementwise on it in fp32.
        gY[coord] = cute.math.tanh(gA[coord].load() + gB[coord].load() * alpha)


# Host code: traced once by cute.compile; it tiles the tensors and launches the kernel on the given stream.
@cute.jit
def add_tanh(mA: cute.Tensor, mB: cute.Tensor, mY: cute.Tensor, alpha: cutlass.Float32, stream: cuda.CUstream):
    gA = cute.zipped_divide(mA, (1, VECTOR))  # ((1, VECTOR), (rows, 1)): vector, then which vector
    gB = cute.zipped_divide(mB, (1, VECTOR))
    gY = cute.zipped_divide(mY, (1, VECTOR))
    vectors = cute.size(gA, mode=[1])
    add_tanh_kernel(gA, gB, gY, alpha).launch(
        grid=[(vectors + THREADS - 1) // THREADS, 1, 1], block=[THREADS, 1, 1], stream=stream
    )


class ModelNew(nn.Module):
    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha
        self.compiled = {}  # one compiled function per input shape (static layouts)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # Dense (n/4, 4) views: each row is one thread's vector, whatever the input shape.
        a2, b2 = a.contiguous().view(-1, VECTOR), b.contiguous().view(-1, VECTOR)
        out = torch.empty_like(a2)
        args = [from_dlpack(t, assumed_align=16) for t in (a2, b2, out)]
        # torch's current stream: the launch orders with torch's work and can be captured in a CUDA graph.
        stream = cuda.CUstream(torch.cuda.current_stream().cuda_stream)
        key = tuple(a2.shape)
        if key not in self.compiled:
            self.compiled[key] = cute.compile(add_tanh, *args, float(self.alpha), stream)
        self.compiled[key](*args, float(self.alpha), stream)
        return out.view_as(a)
'''
