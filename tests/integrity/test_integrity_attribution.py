"""Measured CPU attribution: compute the dispatcher's op trace never sees is found where the machine spent its time.

Each cheat computes the swish on the problem's inputs outside its own kernel (numpy, pure Python,
torch with the dispatcher's modes switched off, torch in a thread or in a forked child, each finished
before ``forward`` returns) and hands the result to a small kernel of its own that only scales it, so
the backend marker is satisfied and the outputs are right. The static scan's process and thread rules
are switched off for these runs: what is shown is the measurement, as with a string-built import.
"""

from __future__ import annotations

import re
from textwrap import dedent, indent

import pytest
from candidates import CORRECT_CPP, REFERENCE
from mcp import Client
from mcp_support import ok

from kfoundry import examples
from kfoundry.sampler import host_refusal

pytestmark = pytest.mark.anyio



def _sized(rows: int, cols: int) -> str:
    return re.sub(r"dim = \d+", f"dim = {cols}", re.sub(r"batch_size = \d+", f"batch_size = {rows}", REFERENCE))


#: 4096 x 2048: torch's and numpy's vectorised kernels take some 10 ms a call here, well above the harness's
#: allowance (``verdict.HARNESS_S``); a cheat on a smaller problem hides in the harness's time (see the README)
BIG_REFERENCE = _sized(4096, 2048)
#: pure Python takes about a second per call at the larger size
PYTHON_REFERENCE = _sized(256, 1024)
#: the static rules a string-built import or a fork would pass (``issues``: names built at run time)
STATIC_OFF = {"concurrency": "off", "low_level_os": "off", "dynamic_name": "off"}

_HEAD = '''\
import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cstdint>
extern "C" void scale(float* y, int64_t n, float factor) {
    for (int64_t i = 0; i < n; ++i) y[i] *= factor;
}
""")


def _scaled(s, factor):
    """The candidate's own kernel: the last, cheapest step, in place on a result made elsewhere."""
    s = s.contiguous()
    _lib.scale(s, s.numel(), float(factor))
    return s
'''


def _cheat(body: str, imports: str = "") -> str:
    return (f"{imports}\n{_HEAD}\n\nclass ModelNew(nn.Module):\n    def __init__(self, scale_factor):\n"
            "        super().__init__()\n        self.scale_factor = scale_factor\n\n    def forward(self, x):\n"
            f"{indent(dedent(body).strip(), '        ')}\n")


CHEATS = {
    "numpy_math": _cheat("""
        a = x.contiguous().numpy()
        s = torch.from_numpy(np.ascontiguousarray(a / (np.float32(1.0) + np.exp(-a)), dtype=np.float32))
        return _scaled(s, self.scale_factor)
    """, "import numpy as np"),
    "pure_python_math": _cheat("""
        values = x.contiguous().view(-1).tolist()
        s = torch.tensor([v / (1.0 + math.exp(min(-v, 700.0))) for v in values], dtype=torch.float32).view_as(x)
        return _scaled(s, self.scale_factor)
    """, "import math"),
    "torch_with_dispatch_disabled": _cheat("""
        with torch._C._DisableTorchDispatch():
            s = x * torch.sigmoid(x)
        return _scaled(s, self.scale_factor)
    """),
    "torch_in_a_finished_thread": _cheat("""
        box = {}
        worker = threading.Thread(target=lambda: box.update(s=x * torch.sigmoid(x)))
        worker.start()
        worker.join()
        return _scaled(box["s"], self.scale_factor)
    """, "import threading"),
    "torch_in_a_forked_child": _cheat("""
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(read)
            torch.set_num_threads(1)  # the parent's OpenMP team does not survive the fork
            left = memoryview((x * torch.sigmoid(x)).numpy().tobytes())
            while left:
                left = left[os.write(write, left):]
            os._exit(0)
        os.close(write)
        chunks = []
        while chunk := os.read(read, 1 << 20):
            chunks.append(chunk)
        os.close(read)
        os.waitpid(child, 0)
        s = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.float32).view_as(x)
        return _scaled(s, self.scale_factor)
    """, "import os"),
}


@pytest.fixture(scope="module", autouse=True)
def _sampling_permitted() -> None:
    refused = host_refusal()
    if refused:
        pytest.skip(f"this host does not let the trusted side sample processes: {refused}")


async def _verify(client: Client, reference: str, source: str, **extra: object) -> dict:
    arguments = {"backend": "cpp", "reference": reference, "candidate": source, "trials": 2, "timeout_s": 120, **extra}
    return await ok(client, "verify", arguments, within=180)


@pytest.mark.parametrize("name", sorted(CHEATS))
async def test_compute_outside_the_candidates_own_code_is_rejected_by_where_the_cpu_time_went(client: Client, name: str) -> None:
    reference = PYTHON_REFERENCE if name == "pure_python_math" else BIG_REFERENCE
    data = await _verify(client, reference, CHEATS[name], guardrails={"rules": STATIC_OFF})

    assert data["state"] == "rejected", data
    coverage = [f for f in data["findings"] if f["code"] == "kernel_coverage"]
    assert coverage and coverage[0]["blocking"], data["findings"]
    assert "of CPU samples in the candidate's own code" in coverage[0]["message"], coverage
    assert data["cpu_time"].get("own", 0) < 0.5 * (1 - data["cpu_time"].get("openmp", 0) - data["cpu_time"].get("libc", 0)), data["cpu_time"]


async def test_the_same_cheat_passes_the_op_trace_alone(client: Client) -> None:
    """With the measurement off, the trace of dispatched ops lets numpy math through: it is the wrong instrument."""
    data = await _verify(client, BIG_REFERENCE, CHEATS["numpy_math"], guardrails={"rules": {**STATIC_OFF, "kernel_coverage": "off"}})

    assert data["state"] == "correct", data
    assert data["cpu_time"] is None


async def test_an_honest_kernel_on_the_larger_problem_is_correct_with_most_samples_in_its_own_code(client: Client) -> None:
    data = await _verify(client, BIG_REFERENCE, CORRECT_CPP)

    assert data["state"] == "correct", data
    assert [f for f in data["findings"] if f["code"] == "kernel_coverage"] == [], data["findings"]
    counted = 1 - data["cpu_time"].get("openmp", 0) - data["cpu_time"].get("libc", 0)
    assert data["cpu_time"]["own"] >= 0.5 * counted, data["cpu_time"]


@pytest.mark.parametrize("problem", [p.name for p in examples.problems()])
async def test_every_bundled_cpp_solution_stays_correct_under_attribution(client: Client, problem: str) -> None:
    data = await _verify(client, examples.source(problem), examples.source(problem, "cpp"))

    assert data["state"] == "correct", data
    assert [f for f in data["findings"] if f["blocking"]] == []
    assert data["cpu_time"] is not None, data["findings"]


async def test_torch_allowed_by_the_guardrails_counts_as_allowed_time(client: Client) -> None:
    data = await _verify(client, BIG_REFERENCE, CHEATS["torch_in_a_finished_thread"],
                         guardrails={"rules": STATIC_OFF, "allow_torch_ops": ["mul", "sigmoid"]})

    assert data["state"] == "correct", data
    assert not any(f["code"] == "kernel_coverage" and f["blocking"] for f in data["findings"]), data["findings"]
