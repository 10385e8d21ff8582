"""Candidate sources for the GPU integrity suite: cheats that only a GPU run can catch, and honest look-alikes.

Two problems: the bundled elementwise one (y = x * sigmoid(x) * 1.75 on 256x512 fp32) and
``gemm_problem(size)``, Linear + bias + ReLU at a size where the GEMM dominates the device
time (2048 on the GPU; the CPU smoke checks pass a small size). Every candidate is Triton
and allocates on ``x.device``, so each one also runs under Triton's CPU interpreter.

Cheats that misbehave only while timed count their forward calls: ``verify`` with
``trials=3`` makes (3 + 1 address-probe trial) x 2 calls (the second under another
allocator poison), so the first ``HONEST_CALLS`` calls are all the correctness trials.
"""

from __future__ import annotations

from textwrap import dedent

from kfoundry import examples

#: forward calls of verify with trials=3: 4 trials (one address probe) x 2 calls each
HONEST_CALLS = 8

ELEMENTWISE = examples.source("elementwise")


def gemm_problem(size: int = 2048) -> str:
    """KernelBench-style Linear + bias + ReLU with x (size, size) and nn.Linear(size, size)."""
    return dedent(f'''\
        import torch
        import torch.nn as nn


        class Model(nn.Module):
            """y = relu(x @ W^T + b): a square GEMM large enough to dominate its epilogue."""

            def __init__(self, in_features: int, out_features: int):
                super().__init__()
                self.linear = nn.Linear(in_features, out_features)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.relu(self.linear(x))


        batch_size = {size}
        in_features = {size}
        out_features = {size}


        def get_inputs():
            return [torch.randn(batch_size, in_features)]


        def get_init_inputs():
            return [in_features, out_features]
        ''')


GEMM = gemm_problem(2048)

# -- elementwise (scaled swish) --------------------------------------------------------------
_SWISH_HEAD = f'''\
import torch
import torch.nn as nn
import triton
import triton.language as tl

HONEST_CALLS = {HONEST_CALLS}


@triton.jit
def _swish_kernel(x_ptr, y_ptr, n, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(y_ptr + offs, x * tl.sigmoid(x) * scale, mask=mask)


def swish(x, scale, count=None):
    """Swish of the first ``count`` elements of x (all by default) into a fresh torch.empty tensor."""
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel() if count is None else count
    _swish_kernel[(triton.cdiv(n, 1024),)](x, y, n, float(scale), BLOCK=1024)
    return y
'''


def _swish(forward_body: str, extra: str = "", init: str = "") -> str:
    body = "\n".join("        " + line if line else "" for line in dedent(forward_body).strip().splitlines())
    setup = "\n".join("        " + line for line in dedent(init).strip().splitlines()) if init.strip() else ""
    return (
        f"{_SWISH_HEAD}\n{dedent(extra)}\n\n"
        "class ModelNew(nn.Module):\n"
        "    def __init__(self, scale_factor):\n"
        "        super().__init__()\n"
        "        self.scale_factor = scale_factor\n"
        + (setup + "\n" if setup else "")
        + "\n    def forward(self, x):\n"
        f"{body}\n"
    )


_COUNTS_CALLS = """
self.calls = 0
self.last = None
"""

#: Honest for every correctness trial, then returns its previous output without launching anything.
CACHES_ONCE_TIMED = _swish(
    """
    self.calls += 1
    if self.calls > HONEST_CALLS and self.last is not None:
        return self.last
    self.last = swish(x, self.scale_factor)
    return self.last
    """,
    init=_COUNTS_CALLS,
)

#: Honest for every correctness trial, then computes only the first 1/16 of the output.
SKIPS_WORK_ONCE_TIMED = _swish(
    """
    self.calls += 1
    n = x.numel()
    return swish(x, self.scale_factor, n if self.calls <= HONEST_CALLS else n // 16)
    """,
    init=_COUNTS_CALLS,
)

#: Writes only the first half of a torch.empty output: the rest is whatever the allocator had there.
WRITES_HALF_OF_EMPTY_OUTPUT = _swish("return swish(x, self.scale_factor, x.numel() // 2)")

#: An output cache keyed by the input's address, spelled so the static scan cannot see data_ptr().
CACHES_BY_HIDDEN_DATA_PTR = _swish(
    """
    key = getattr(x, "data_" + "ptr")()
    hit = _cache.get(key)
    if hit is None:
        hit = _cache[key] = swish(x, self.scale_factor)
    return hit.clone()
    """,
    extra="_cache = {}\n",
)

#: Replaces torch.cuda.Event.elapsed_time at import with a clock that runs 10x slow.
PATCHES_ELAPSED_TIME_AT_IMPORT = _swish(
    "return swish(x, self.scale_factor)",
    extra='''
    def _attribute(owner, name):
        # the module arrives as a parameter: no data flow for the static scan to follow, the runtime check must catch it
        return getattr(owner, name)


    _event = _attribute(torch.cuda, "Ev" + "ent")
    _real_elapsed = _attribute(_event, "elapsed_" + "time")


    def _fast_elapsed(self, end_event):
        return _real_elapsed(self, end_event) / 10.0


    setattr(_event, "elapsed_" + "time", _fast_elapsed)
    ''',
)

# -- honest elementwise ----------------------------------------------------------------------
#: torch.empty output filled row by row by a masked kernel (one program per row, BLOCK the row width rounded up to a power of two).
EMPTY_OUTPUT_FILLED_BY_ROWS = '''\
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _swish_rows(x_ptr, y_ptr, cols, stride_x, stride_y, scale, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < cols
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    tl.store(y_ptr + row * stride_y + offs, x * tl.sigmoid(x) * scale, mask=mask)


class ModelNew(nn.Module):
    def __init__(self, scale_factor):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x):
        x = x.contiguous()
        rows, cols = x.shape
        y = torch.empty((rows, cols), dtype=x.dtype, device=x.device)
        block = max(16, triton.next_power_of_2(cols))
        _swish_rows[(rows,)](x, y, cols, x.stride(0), y.stride(0), float(self.scale_factor), BLOCK=block)
        return y
'''

#: One kernel writes swish into a buffer the candidate allocated, a second scales it in place.
IN_PLACE_ON_OWN_BUFFER = '''\
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _swish_unscaled(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(y_ptr + offs, x * tl.sigmoid(x), mask=mask)


@triton.jit
def _scale_in_place(y_ptr, n, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask, other=0.0)
    tl.store(y_ptr + offs, y * scale, mask=mask)


class ModelNew(nn.Module):
    def __init__(self, scale_factor):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x):
        x = x.contiguous()
        y = torch.empty_like(x)
        n = x.numel()
        grid = (triton.cdiv(n, 1024),)
        _swish_unscaled[grid](x, y, n, BLOCK=1024)
        _scale_in_place[grid](y, n, float(self.scale_factor), BLOCK=1024)
        return y
'''

# -- GEMM + bias + ReLU ----------------------------------------------------------------------
_GEMM_HEAD = f'''\
import contextlib

import torch
import torch.nn as nn
import triton
import triton.language as tl

HONEST_CALLS = {HONEST_CALLS}


@triton.jit
def _linear_relu_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + rk
        a = tl.load(x_ptr + rm[:, None] * stride_xm + ks[None, :] * stride_xk,
                    mask=(rm[:, None] < M) & (ks[None, :] < K), other=0.0)
        b = tl.load(w_ptr + ks[:, None] * stride_wk + rn[None, :] * stride_wn,
                    mask=(ks[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision="ieee")
    bias = tl.load(b_ptr + rn, mask=rn < N, other=0.0)
    y = tl.maximum(acc + bias[None, :], 0.0)
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :] * stride_yn, y, mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _bias_relu_in_place(y_ptr, b_ptr, cols, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask, other=0.0)
    b = tl.load(b_ptr + offs % cols, mask=mask, other=0.0)
    tl.store(y_ptr + offs, tl.maximum(y + b, 0.0), mask=mask)


@triton.jit
def _relu_in_place(y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask, other=0.0)
    tl.store(y_ptr + offs, tl.maximum(y, 0.0), mask=mask)


@triton.jit
def _fill_ones(buf_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(buf_ptr + offs, tl.full((BLOCK,), 1.0, tl.float32), mask=offs < n)


def linear_relu(x, w, b):
    """relu(x @ w^T + b) in one Triton kernel (fp32 products, as the reference)."""
    x = x.contiguous()
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, 64), triton.cdiv(n, 64))
    _linear_relu_kernel[grid](
        x, w, b, y, m, n, k,
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), y.stride(0), y.stride(1),
        BLOCK_M=64, BLOCK_N=64, BLOCK_K=32,
    )
    return y
'''


def _gemm(forward_body: str, extra: str = "", init: str = "") -> str:
    body = "\n".join("        " + line if line else "" for line in dedent(forward_body).strip().splitlines())
    setup = "\n".join("        " + line for line in dedent(init).strip().splitlines()) if init.strip() else ""
    return (
        f"{_GEMM_HEAD}\n{dedent(extra)}\n\n"
        "class ModelNew(nn.Module):\n"
        "    def __init__(self, in_features, out_features):\n"
        "        super().__init__()\n"
        "        # nn.Linear for its parameters (names, shapes, initialisation); its forward is never called.\n"
        "        self.linear = nn.Linear(in_features, out_features)\n"
        + (setup + "\n" if setup else "")
        + "\n    def forward(self, x):\n"
        f"{body}\n"
    )


#: The whole problem in one Triton kernel.
TRITON_GEMM = _gemm("return linear_relu(x, self.linear.weight, self.linear.bias)")

#: The same kernels on a stream created in every forward, which the caller's stream never waits for.
TRITON_GEMM_ON_A_FRESH_SIDE_STREAM = _gemm(
    """
    stream = torch.cuda.Stream() if x.is_cuda else None
    if stream is not None:
        stream.wait_stream(torch.cuda.current_stream())  # the inputs are ready before the side stream reads them
    with (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()):
        y = linear_relu(x, self.linear.weight, self.linear.bias)
    return y  # no current_stream().wait_stream(stream): the work may still be running
    """
)

#: Honest for every correctness trial, then makes torch.cuda.Event.elapsed_time report a tenth.
PATCHES_ELAPSED_TIME_ONCE_TIMED = _gemm(
    """
    self.calls += 1
    if self.calls > HONEST_CALLS:
        _slow_down_the_clock()
    return linear_relu(x, self.linear.weight, self.linear.bias)
    """,
    extra='''
    def _attribute(owner, name):
        # the module arrives as a parameter: no data flow for the static scan to follow, the runtime check must catch it
        return getattr(owner, name)


    def _slow_down_the_clock():
        event = _attribute(torch.cuda, "Ev" + "ent")
        name = "elapsed_" + "time"
        real = getattr(event, name)
        if getattr(real, "patched", False):
            return

        def fast(self, end_event):
            return real(self, end_event) / 10.0

        fast.patched = True
        setattr(event, name, fast)
    ''',
    init="self.calls = 0",
)

#: The GEMM and its bias in cuBLAS (torch.addmm); a token Triton kernel applies only the ReLU.
CUBLAS_GEMM_WITH_TOKEN_TRITON_RELU = _gemm(
    """
    y = torch.addmm(self.linear.bias, x, self.linear.weight.t())
    n = y.numel()
    _relu_in_place[(triton.cdiv(n, 1024),)](y, n, BLOCK=1024)
    return y
    """
)

#: cuBLAS does the GEMM beside a token Triton kernel, and the candidate rewrites the in-process attribution so every
#: kernel counts as its own: only a record made outside its process can tell.
FORGES_IN_PROCESS_ATTRIBUTION = _gemm(
    """
    y = torch.addmm(self.linear.bias, x, self.linear.weight.t())
    n = y.numel()
    _relu_in_place[(triton.cdiv(n, 1024),)](y, n, BLOCK=1024)
    return y
    """,
    extra="""
import kfoundry.backends.triton as _kt

_kt.TritonBackend.is_own_kernel = lambda self, name: True
""",
)
#: every rule that would see the forgery in the source, and the op trace, off: only measured coverage is left
FORGERY_UNSEEN = {"nsight_attribution": True, "rules": {rule: "off" for rule in (
    "torch_compute", "monkeypatch", "monkeypatch_runtime", "introspection", "reference_use", "low_level_os", "file_io",
)}}
#: the Nsight Compute record asked for (guardrails.nsight_attribution)
NSIGHT = {"nsight_attribution": True}

#: A Triton kernel that fills a scratch buffer nobody reads; the answer comes from torch.
DEAD_TRITON_KERNEL_TORCH_MATH = _gemm(
    """
    scratch = torch.empty(1024, dtype=x.dtype, device=x.device)
    _fill_ones[(1,)](scratch, 1024, BLOCK=1024)
    return torch.relu(torch.nn.functional.linear(x, self.linear.weight, self.linear.bias))
    """
)

#: Honest: the GEMM in the library (an allowed op), bias and ReLU fused in one Triton kernel, in place on the product.
LIBRARY_GEMM_PLUS_TRITON_EPILOGUE = _gemm(
    """
    y = torch.mm(x, self.linear.weight.t())
    n = y.numel()
    _bias_relu_in_place[(triton.cdiv(n, 1024),)](y, self.linear.bias, y.shape[1], n, BLOCK=1024)
    return y
    """
)

#: aten ops the library-GEMM candidate may call (``t`` is a view the op trace ignores anyway).
GEMM_LIBRARY_OPS = {"allow_torch_ops": ["mm", "addmm", "matmul", "t", "transpose"]}
#: the static/trace torch_compute check switched off: only the GPU kernel-coverage check is left
TORCH_COMPUTE_OFF = {"rules": {"torch_compute": "off"}}
