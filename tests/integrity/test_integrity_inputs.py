"""Inputs as a check: stress families find fragile kernels, and every timed call is fresh and may be rechecked."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp_support import ok
from numerics_candidates import SOFTMAX_CPP as PLAIN_SOFTMAX_CPP

from kfoundry import examples
from kfoundry.schema import KernelShare, ProfileResult, State
from kfoundry.verify.guardrails import Guardrails
from kfoundry.verify.verdict import device_coverage, kernel_coverage

pytestmark = pytest.mark.anyio

SOFTMAX = examples.source("softmax")
SOFTMAX_CPP = examples.source("softmax", "cpp")
# Without the row max subtracted, exp() overflows once logits are large: fine on randn, NaN at x 2^16.
# Made from the suite's own copy of a softmax kernel, so tuning the bundled solution cannot turn it honest.
NAIVE_SOFTMAX = PLAIN_SOFTMAX_CPP.replace("std::exp(xr[c] - m)", "std::exp(xr[c])")
assert NAIVE_SOFTMAX != PLAIN_SOFTMAX_CPP

EXP_REFERENCE = '''\
import torch
import torch.nn as nn


class Model(nn.Module):
    def forward(self, x):
        return torch.exp(x)


def get_inputs():
    return [torch.randn(64, 128)]


def get_init_inputs():
    return []
'''
EXP_CPP = '''\
import torch
import torch.nn as nn

from kfoundry.backends.cpp import load_cpp

_lib = load_cpp(r"""
#include <cmath>
#include <cstdint>
extern "C" void exp_all(const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}
""")


class ModelNew(nn.Module):
    def forward(self, x):
        x = x.contiguous()
        y = torch.empty_like(x)
        _lib.exp_all(x, y, x.numel())
        return y
'''

# Honest for its first seven calls (every verify trial, twice each, and the warm-up), then it
# returns the last output without computing: only the timed calls are cheated.
CACHES_WHILE_TIMED = SOFTMAX_CPP.replace(
    '''    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
''',
    '''    def __init__(self):
        super().__init__()
        self.calls = 0
        self.last = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 7 and self.last is not None:
            return self.last
''',
).replace("        return y\n", "        self.last = y\n        return y\n")


async def _verify(client: Client, reference: str, candidate: str, **extra: object) -> dict:
    arguments = {"backend": "cpp", "reference": reference, "candidate": candidate, "trials": 2, **extra}
    return await ok(client, "verify", arguments, within=150)


async def test_a_softmax_without_max_subtraction_passes_standard_inputs_but_fails_the_large_family(client: Client) -> None:
    plain = await _verify(client, SOFTMAX, NAIVE_SOFTMAX)
    stressed = await _verify(client, SOFTMAX, NAIVE_SOFTMAX, stress=["signed", "large", "tiny"])

    assert plain["state"] == "correct", plain
    assert stressed["state"] == "mismatch", stressed
    assert stressed["mismatch"]["input_family"] == "large"
    assert stressed["mismatch"]["reason"] == "nonfinite"
    # every family asked for is checked; the default 'wide' family may be there too, once verify runs it
    outcomes = {s["family"]: s["status"] for s in stressed["stress"]}
    assert {k: v for k, v in outcomes.items() if k != "wide"} == {"signed": "checked", "large": "checked", "tiny": "checked"}


async def test_the_bundled_softmax_survives_every_stress_family(client: Client) -> None:
    data = await _verify(client, SOFTMAX, SOFTMAX_CPP, stress=["signed", "large", "tiny"])

    assert data["state"] == "correct", data
    assert data["trials_passed"] == 2
    assert [s["status"] for s in data["stress"] if s["family"] != "wide"] == ["checked"] * 3
    assert all(s["status"] == "checked" for s in data["stress"])


async def test_a_family_the_reference_itself_cannot_survive_is_dropped_and_said_so(client: Client) -> None:
    data = await _verify(client, EXP_REFERENCE, EXP_CPP, stress=["large", "tiny"])

    assert data["state"] == "correct", data
    outcomes = {s["family"]: s for s in data["stress"]}
    assert outcomes["large"]["status"] == "dropped" and "non-finite" in outcomes["large"]["reason"]
    assert outcomes["tiny"]["status"] == "checked"


async def test_an_unknown_stress_family_is_refused(client: Client) -> None:
    from mcp_support import call, error_text

    result = await call(client, "verify", {"backend": "cpp", "reference": SOFTMAX, "candidate": SOFTMAX_CPP, "stress": ["huge"]})

    assert result.is_error
    assert "signed" in error_text(result)


async def test_a_candidate_that_caches_only_while_timed_is_rejected_by_the_timed_output_recheck(client: Client) -> None:
    arguments = {"backend": "cpp", "reference": SOFTMAX, "candidate": CACHES_WHILE_TIMED, "trials": 1, "warmup": 3, "reps": 8,
                 "baselines": ["eager"]}

    data = await ok(client, "profile", arguments, within=200)

    assert data["verify"]["state"] == "correct", data["verify"]
    assert data["state"] == "rejected", data
    [finding] = [f for f in data["findings"] if f["code"] == "timed_output"]
    assert finding["blocking"] and "timed call" in finding["message"]


async def test_an_honest_candidate_passes_the_timed_output_recheck(client: Client) -> None:
    arguments = {"backend": "cpp", "reference": SOFTMAX, "candidate": SOFTMAX_CPP, "trials": 1, "warmup": 1, "reps": 8, "baselines": ["eager"]}

    data = await ok(client, "profile", arguments, within=200)

    assert data["state"] == "correct", data
    assert data["timed_rechecks"] == arguments["reps"]  # every timed call is judged
    assert not [f for f in data["findings"] if f["code"] == "timed_output"]


def _profiled(*shares: tuple[str, float, bool, bool]) -> ProfileResult:
    breakdown = [KernelShare(name=n, time_ms=s, share=s, calls=1, own=own, allowed=allowed) for n, s, own, allowed in shares]
    return ProfileResult(state=State.correct, backend="triton", device="cuda:0", breakdown=breakdown, duration_s=0.0, run_id="profile-x")


def test_gpu_coverage_rejects_a_candidate_whose_device_time_is_mostly_library_kernels() -> None:
    share, findings = kernel_coverage(_profiled(("sm90_xmma_gemm", 0.9, False, False), ("_epilogue", 0.1, True, False)), Guardrails())

    assert share == pytest.approx(0.1)
    [finding] = findings
    assert finding.code == "kernel_coverage" and finding.blocking and "sm90_xmma_gemm" in finding.message


def test_gpu_coverage_counts_library_kernels_of_allowed_ops_and_honours_the_threshold() -> None:
    result = _profiled(("sm90_xmma_gemm", 0.9, False, True), ("_epilogue", 0.1, True, False))

    assert kernel_coverage(result, Guardrails()) == (pytest.approx(1.0), [])
    share, findings = kernel_coverage(_profiled(("gemm", 0.3, False, False), ("own", 0.7, True, False)), Guardrails(min_own_kernel_share=0.8))
    assert share == pytest.approx(0.7) and [f.code for f in findings] == ["kernel_coverage"]


def test_device_coverage_of_a_call_with_no_kernel_records_is_unmeasured_not_zero() -> None:
    assert device_coverage([], Guardrails()) == (None, [])


def test_a_gpu_profile_whose_breakdown_call_measured_nothing_fails_closed_naming_why() -> None:
    result = _profiled().model_copy(update={"warnings": ["per-kernel breakdown failed: RuntimeError: no"]})

    share, [finding] = kernel_coverage(result, Guardrails())

    assert share is None and finding.code == "kernel_coverage" and finding.blocking and "RuntimeError: no" in finding.message


def test_gpu_coverage_does_not_apply_on_cpu() -> None:
    result = _profiled(("aten::mm", 1.0, False, False)).model_copy(update={"device": "cpu"})

    assert kernel_coverage(result, Guardrails()) == (None, [])
