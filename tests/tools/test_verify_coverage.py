"""A GPU verify's device-time breakdown: kept with the run, and judged against the own-kernel floor."""

from __future__ import annotations

import json
from pathlib import Path

from kfoundry.artifacts import Run
from kfoundry.runner.session import Report
from kfoundry.schema import KernelShare
from kfoundry.tools.verify import _measured_coverage
from kfoundry.verify.guardrails import Guardrails


def _report(*shares: tuple[str, float, bool]) -> Report:
    return Report(breakdown=[KernelShare(name=name, time_ms=share, share=share, calls=1, own=own) for name, share, own in shares])


def test_a_due_breakdown_is_written_to_the_run_and_gives_the_own_kernel_share(tmp_path: Path) -> None:
    run = Run("verify-test", tmp_path)
    report = _report(("my_kernel", 0.9, True), ("vectorized_elementwise_kernel", 0.1, False))

    findings, share = _measured_coverage(run, report, Guardrails(), [], due=True)

    assert share == 0.9 and findings == []
    saved = json.loads((tmp_path / "breakdown.json").read_text())
    assert [(k["name"], k["own"]) for k in saved["kernels"]] == [("my_kernel", True), ("vectorized_elementwise_kernel", False)]


def test_a_breakdown_mostly_in_library_kernels_is_a_blocking_kernel_coverage_finding(tmp_path: Path) -> None:
    report = _report(("token_kernel", 0.05, True), ("sm90_xmma_gemm_f32f32", 0.95, False))

    findings, share = _measured_coverage(Run("verify-test", tmp_path), report, Guardrails(), [], due=True)

    assert share == 0.05
    [finding] = findings
    assert finding.code == "kernel_coverage" and finding.blocking and "sm90_xmma_gemm_f32f32" in finding.message


def test_a_breakdown_not_due_is_neither_written_nor_judged(tmp_path: Path) -> None:
    findings, share = _measured_coverage(Run("verify-test", tmp_path), _report(("x", 1.0, False)), Guardrails(), [], due=False)

    assert (findings, share) == ([], None) and not (tmp_path / "breakdown.json").exists()
