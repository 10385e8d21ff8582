import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _step_kernel(x_ptr, y_ptr, n, a, b, OP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(x_ptr + offs, mask=ok)
    if OP == 0:
        y = x * a + b
    elif OP == 1:
        y = tl.maximum(x, 0.0)
    elif OP == 2:
        y = x * x
    else:
        y = tl.abs(x)
    tl.store(y_ptr + offs, y, mask=ok)


# The reference's eight steps, one launch each: (op, a, b) with op 0 = x * a + b, 1 = relu, 2 = square, 3 = abs.
STEPS = ((0, 1.5, 0.0), (0, 1.0, 0.25), (1, 0.0, 0.0), (2, 0.0, 0.0), (0, 1.0, -0.5), (3, 0.0, 0.0), (0, 0.75, 0.0), (0, 1.0, 1.0))


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        n = x.numel()
        for op, a, b in STEPS:
            y = torch.empty_like(x)
            _step_kernel[(triton.cdiv(n, 1024),)](x, y, n, a, b, OP=op, BLOCK=1024)
            x = y
        return x
