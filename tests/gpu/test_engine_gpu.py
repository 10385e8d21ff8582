"""The engine on a GPU: inputs made on the device, outputs judged in place, the parent never holds a tensor."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp_support import ok, rss_growth

pytestmark = [pytest.mark.gpu, pytest.mark.anyio]

RELU_1GB = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.relu(x)


def get_inputs():
    return [torch.rand(16384, 16384) - 0.5]


def get_init_inputs():
    return []
'''

RELU_TRITON = '''
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _relu(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m)
    tl.store(y_ptr + offs, tl.maximum(x, 0.0), mask=m)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        x = x.contiguous()
        y = torch.empty_like(x)
        n = x.numel()
        _relu[(triton.cdiv(n, 1024),)](x, y, n, BLOCK=1024)
        return y
'''

# Switches off the device synchronize the harness relies on, and writes its output from a slow
# kernel: the output is complete only well after forward has returned.
UNSYNCHRONIZED = RELU_TRITON.replace("class ModelNew", '''
@triton.jit
def _slow_relu(x_ptr, y_ptr, n, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m)
    acc = x
    for _ in range(ITERS):
        acc = acc * 0.5 + x
    tl.store(y_ptr + offs, tl.maximum(x, 0.0) + acc * 0.0, mask=m)


torch._C._cuda_synchronize = lambda: None
torch.cuda.synchronize = lambda *a, **k: None


class ModelNew''').replace("_relu[(triton.cdiv(n, 1024),)](x, y, n, BLOCK=1024)", "_slow_relu[(triton.cdiv(n, 1024),)](x, y, n, ITERS=4000, BLOCK=1024)")

OPEN = {"rules": {"monkeypatch": "off", "monkeypatch_runtime": "off", "introspection": "off"}}


async def test_a_1_gib_problem_is_verified_and_profiled_without_the_parent_holding_its_tensors(client: Client) -> None:
    with rss_growth() as grown:
        arguments = {"backend": "triton", "reference": RELU_1GB, "candidate": RELU_TRITON}
        verified = await ok(client, "verify", arguments, within=300)
        profiled = await ok(client, "profile", {**arguments, "reps": 10, "warmup": 2, "baselines": ["eager"]}, within=300)

    assert verified["state"] == "correct" and verified["trials_passed"] == 5, verified
    assert profiled["state"] == "correct", profiled
    assert profiled["timed_rechecks"] == 10  # every timed call was judged on the device
    # An elementwise pass over 2 GiB of traffic takes well under 10 ms on any data-centre GPU.
    assert 0 < profiled["candidate"]["median_ms"] < 10 and 0 < profiled["eager"]["median_ms"] < 10, profiled
    assert profiled["own_kernel_share"] > 0.9
    assert grown[0] < 256, f"the parent grew by {grown[0]:.0f} MB"


async def test_device_work_that_outlives_forward_is_not_accepted(client: Client) -> None:
    arguments = {"backend": "triton", "reference": RELU_1GB, "candidate": UNSYNCHRONIZED, "trials": 2, "guardrails": OPEN, "timeout_s": 240}

    data = await ok(client, "verify", arguments, within=300)

    assert data["state"] in ("mismatch", "rejected", "runtime_error"), data
    if data["state"] == "rejected":
        assert {"late_work", "monkeypatch_runtime"} & {f["code"] for f in data["findings"]}, data["findings"]


TOO_BIG = RELU_1GB.replace("torch.rand(16384, 16384) - 0.5", "torch.rand(1 << 20, 1 << 18)")  # 1 TiB of fp32


async def test_a_problem_larger_than_the_device_is_a_typed_error_naming_the_bytes(client: Client) -> None:
    data = await ok(client, "verify", {"backend": "triton", "reference": TOO_BIG, "candidate": RELU_TRITON, "trials": 1}, within=300)

    assert data["state"] == "runtime_error", data
    error = data["error"]
    assert error["type"] == "DeviceMemoryError", error
    assert str(2 * (1 << 40)) in error["message"] and "bytes are free" in error["message"], error
