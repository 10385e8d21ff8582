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
from kfoundry.sampler import Attribution, ObjectShare, Where, host_refusal
from kfoundry.verify.guardrails import Guardrails
from kfoundry.verify.verdict import cpu_coverage, cpu_share


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


@pytest.fixture(scope="module")
def sampling() -> None:
    """The served tests need a host that lets the trusted side sample; the verdict's own tests do not."""
    refused = host_refusal()
    if refused:
        pytest.skip(f"this host does not let the trusted side sample processes: {refused}")


async def _verify(client: Client, reference: str, source: str, **extra: object) -> dict:
    arguments = {"backend": "cpp", "reference": reference, "candidate": source, "trials": 2, "timeout_s": 120, **extra}
    return await ok(client, "verify", arguments, within=180)


@pytest.mark.parametrize("name", sorted(CHEATS))
@pytest.mark.anyio
@pytest.mark.usefixtures("sampling")
async def test_compute_outside_the_candidates_own_code_is_rejected_by_where_the_cpu_time_went(client: Client, name: str) -> None:
    reference = PYTHON_REFERENCE if name == "pure_python_math" else BIG_REFERENCE
    data = await _verify(client, reference, CHEATS[name], guardrails={"rules": STATIC_OFF})

    assert data["state"] == "rejected", data
    coverage = [f for f in data["findings"] if f["code"] == "kernel_coverage"]
    assert coverage and coverage[0]["blocking"], data["findings"]
    assert "of CPU samples in the candidate's own code" in coverage[0]["message"], coverage
    assert data["cpu_time"].get("own", 0) < 0.5 * (1 - data["cpu_time"].get("openmp", 0) - data["cpu_time"].get("libc", 0)), data["cpu_time"]


@pytest.mark.anyio
@pytest.mark.usefixtures("sampling")
async def test_the_same_cheat_passes_the_op_trace_alone(client: Client) -> None:
    """With the measurement off, the trace of dispatched ops lets numpy math through: it is the wrong instrument."""
    data = await _verify(client, BIG_REFERENCE, CHEATS["numpy_math"], guardrails={"rules": {**STATIC_OFF, "kernel_coverage": "off"}})

    assert data["state"] == "correct", data
    assert data["cpu_time"] is None


@pytest.mark.anyio
@pytest.mark.usefixtures("sampling")
async def test_an_honest_kernel_on_the_larger_problem_is_correct_with_most_samples_in_its_own_code(client: Client) -> None:
    data = await _verify(client, BIG_REFERENCE, CORRECT_CPP)

    assert data["state"] == "correct", data
    assert [f for f in data["findings"] if f["code"] == "kernel_coverage"] == [], data["findings"]
    counted = 1 - data["cpu_time"].get("openmp", 0) - data["cpu_time"].get("libc", 0)
    assert data["cpu_time"]["own"] >= 0.5 * counted, data["cpu_time"]


@pytest.mark.parametrize("problem", [p.name for p in examples.problems()])
@pytest.mark.anyio
@pytest.mark.usefixtures("sampling")
async def test_every_bundled_cpp_solution_stays_correct_under_attribution(client: Client, problem: str) -> None:
    data = await _verify(client, examples.source(problem), examples.source(problem, "cpp"))

    assert data["state"] == "correct", data
    assert [f for f in data["findings"] if f["blocking"]] == []
    assert data["cpu_time"] is not None, data["findings"]


@pytest.mark.anyio
@pytest.mark.usefixtures("sampling")
async def test_torch_allowed_by_the_guardrails_counts_as_allowed_time(client: Client) -> None:
    data = await _verify(client, BIG_REFERENCE, CHEATS["torch_in_a_finished_thread"],
                         guardrails={"rules": STATIC_OFF, "allow_torch_ops": ["mul", "sigmoid"]})

    assert data["state"] == "correct", data
    assert not any(f["code"] == "kernel_coverage" and f["blocking"] for f in data["findings"]), data["findings"]


def _measured(calls_s: float = 1.0, rounds: int = 1000, **by_class: int) -> Attribution:
    counts = {Where(k): v for k, v in by_class.items()}
    names = {Where.own: "/x/built/k/lib.so", Where.numpy: "/v/numpy/_core/_multiarray_umath.so", Where.torch: "/v/torch/lib/libtorch_cpu.so",
             Where.python: "/p/libpython3.11.so.1.0", Where.openmp: "/v/torch/lib/libgomp.so.1", Where.libc: "/usr/lib/libc.so.6"}
    objects = sorted((ObjectShare(path=names[k], where=k, samples=v) for k, v in counts.items()), key=lambda o: -o.samples)
    total = sum(counts.values())
    return Attribution(samples=total, by_class=counts, objects=objects, own_share=counts.get(Where.own, 0) / total, threads_seen=2,
                       threads_sampled=2, processes_seen=1, duration_s=calls_s, interval_s=0.0005, rounds=rounds, cpu_s=0.05)


def test_a_small_honest_kernel_is_not_rejected_for_the_harness_time_around_it() -> None:
    """Ten calls at 1000 samples a second excuse 150 samples: a softmax-sized kernel's 5 own beside 47 Python passes."""
    assert cpu_coverage(_measured(own=5, python=30, torch=17, openmp=500), "", Guardrails(), calls=10) == []


def test_numpy_doing_the_work_is_rejected_naming_numpy_first() -> None:
    [finding] = cpu_coverage(_measured(own=9, numpy=174, python=4, torch=7, libc=11), "", Guardrails(), calls=4)
    assert finding.blocking and finding.code == "kernel_coverage"
    assert "of CPU samples in the candidate's own code (need 50%" in finding.message
    assert finding.message.index("_multiarray_umath.so") < finding.message.index("libtorch_cpu.so"), finding.message


def test_a_share_below_the_floor_from_few_samples_is_said_without_blocking() -> None:
    [finding] = cpu_coverage(_measured(own=4, python=8), "", Guardrails(), calls=0)
    assert not finding.blocking and "too few to be sure" in finding.message


def test_openmp_spin_and_the_c_runtime_count_neither_way() -> None:
    assert cpu_coverage(_measured(own=60, python=40, openmp=5000, libc=900), "", Guardrails(), calls=0) == []


def test_allowed_torch_ops_credit_torch_time_and_a_lower_floor_passes_more() -> None:
    cheat = _measured(own=5, torch=400, python=20)
    assert cpu_coverage(cheat, "", Guardrails(), calls=1)[0].blocking
    assert cpu_coverage(cheat, "", Guardrails(allow_torch_ops=["mul"]), calls=1) == []
    assert cpu_coverage(_measured(own=300, python=400), "", Guardrails(min_own_kernel_share=0.3), calls=0) == []


def test_no_sampling_is_a_warning_that_says_why_and_the_rule_can_be_turned_off() -> None:
    [finding] = cpu_coverage(None, "this host does not let the trusted side sample processes: EPERM", Guardrails())
    assert not finding.blocking and "EPERM" in finding.message
    assert cpu_coverage(_measured(numpy=500), "", Guardrails(rules={"kernel_coverage": "off"})) == []


def test_the_profile_share_is_own_over_the_counted_classes() -> None:
    shares = {"openmp": 0.5, "libc": 0.1, "own": 0.3, "python": 0.1}
    assert cpu_share(shares, Guardrails()) == pytest.approx(0.75)
    assert cpu_share({"openmp": 1.0}, Guardrails()) is None


@pytest.mark.anyio
@pytest.mark.usefixtures("sampling")
async def test_profile_rejects_a_cheat_by_its_measured_share(client: Client) -> None:
    """Sampled after the timed calls, so every judged call keeps its position whether or not the CPU is sampled."""
    arguments = {"backend": "cpp", "reference": BIG_REFERENCE, "candidate": CHEATS["torch_with_dispatch_disabled"], "trials": 1,
                 "warmup": 1, "reps": 5, "baselines": ["eager"], "guardrails": {"rules": STATIC_OFF}}

    data = await ok(client, "profile", arguments, within=300)

    assert data["state"] == "rejected", data
    assert any(f["code"] == "kernel_coverage" and f["blocking"] for f in data["findings"]), data["findings"]
    assert data["verify"]["state"] == "rejected"
    assert data["verify"]["cpu_time"].get("own", 0) < 0.5, data["verify"]["cpu_time"]
