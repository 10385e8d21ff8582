"""Nsight Compute runs of a candidate: a fresh worker started under ``ncu``, which stays outside the sandbox.

Two uses: hardware counters per kernel (asked for), and where one call's device time goes
(``attribute``), judged on the trusted side from kernel names the candidate cannot choose.
ncu runs as the trusted user and writes its report into a folder the sandbox never sees;
it reaches the code it injects into the worker over loopback, so the two share a network
namespace made for them alone (``jail.private_network``).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kfoundry import jail
from kfoundry.artifacts import Run
from kfoundry.backends.base import Backend
from kfoundry.profilers.breakdown import shares
from kfoundry.profilers.libraries import is_library_kernel, name_key
from kfoundry.profilers.textparse import kernel_counters, parse_ncu_csv
from kfoundry.runner.process import WorkerGone
from kfoundry.runner.session import Ending, Plan, Session
from kfoundry.schema import AttributionStatus, DeviceAttribution, KernelCounters, KernelShare, State
from kfoundry.tools.runtime import Runtime

SECTIONS = ("SpeedOfLight", "Occupancy", "MemoryWorkloadAnalysis", "LaunchStats")
MAX_KERNELS = 64
#: launches recorded in the attributed call; a call that reaches it is not judged (launches past it would go unseen)
MAX_LAUNCHES = 2000
NCU_LOG = "ncu.csv"


def find_ncu() -> str | None:
    found = shutil.which("ncu")
    if found:
        return found
    for pattern in ("/usr/local/cuda/bin/ncu", "/opt/nvidia/nsight-compute/*/ncu", "/usr/local/cuda-*/bin/ncu"):
        hits = sorted(glob.glob(pattern))
        if hits and os.access(hits[-1], os.X_OK):
            return hits[-1]
    return None


def ncu_command(ncu: str, log: Path) -> list[str]:
    sections = [arg for name in SECTIONS for arg in ("--section", name)]
    return [
        ncu, "--csv", "--page", "details", "--profile-from-start", "off", "--target-processes", "all",
        "--clock-control", "none", "--launch-count", str(MAX_KERNELS), *sections, "--log-file", str(log),
    ]


def times_command(ncu: str, log: Path) -> list[str]:
    """One metric, one pass per kernel: kernel time, without the replays the counter sections need.

    Caches are left as the call leaves them (no flush before each kernel), so a kernel's time is
    never longer than it would be in the timed calls, which flush only before the whole call.
    """
    return [
        ncu, "--csv", "--page", "details", "--profile-from-start", "off", "--target-processes", "all",
        "--clock-control", "none", "--cache-control", "none", "--launch-count", str(MAX_LAUNCHES), "--metrics", "gpu__time_duration.sum", "--log-file", str(log),
    ]


def usable_ncu(device: str) -> tuple[str, str]:
    """(ncu's path, "") when an Nsight Compute run can be made for a job on ``device``, else ("", why not)."""
    if not device.startswith("cuda"):
        return "", "Nsight Compute needs an NVIDIA GPU; this job ran on the CPU"
    ncu = find_ncu()
    if ncu is None:
        return "", "ncu (Nsight Compute) is not installed or not on PATH"
    if jail.enabled() and jail.private_network_reason():
        return "", jail.private_network_reason()
    return ncu, ""


@dataclass
class NcuRun:
    """ncu's CSV for one candidate call, whether that call's outputs were judged correct, and why it failed if it did."""

    text: str = ""
    correct: bool = False
    failure: str = ""


async def _under_ncu(rt: Runtime, device: str, backend: Backend, reference: str, candidate: str, precision: str,
                     timeout_s: float, run: Run, command: list[str], log: Path, label: str) -> NcuRun:
    try:
        worker = await rt.pool.acquire(device, wrapper=command)
    except WorkerGone as exc:
        return NcuRun(failure=f"Nsight Compute did not start the worker: {str(exc)[:500]}")
    ref_worker = await rt.pool.acquire(device)
    try:
        # Three judged calls; the last runs inside the profiler range (the first two take JIT and autotuning).
        session = Session(backend=backend.name, device=device, precision=precision, problem=reference, candidate=candidate,
                          reference_worker=ref_worker, candidate_worker=worker, profiled_from=2)
        plan = Plan(trials=[(secrets.randbits(31), "standard") for _ in range(3)])
        # The session waits for ncu to write its report (it does when the profiled process exits) before it ends.
        report = await session.run(plan, timeout_s)
        text = log.read_text(errors="replace") if log.is_file() else ""
        stderr = worker.log_tail("stderr", 2000) + worker.log_tail("stdout", 2000)
    finally:
        await rt.pool.release(worker, run.path / f"{label}-worker")
        await rt.pool.release(ref_worker, run.path / f"{label}-reference-worker")
    if text:
        run.write(f"{label}.csv", text)
    if report.ending is not Ending.done:
        message = report.error.message if report.error else report.ending.value
        return NcuRun(text=text, failure=f"the job under Nsight Compute failed ({message})")
    correct = len(report.trials) == len(plan.trials) and all(c.check is not None and c.check.state is State.correct for c in report.trials)
    hint = " ".join(line for line in stderr.splitlines() if "ERR" in line or "error" in line.lower())[:400]
    return NcuRun(text=text, correct=correct, failure="" if text else f"ncu wrote no report{': ' + hint if hint else ''}")


def _scratch() -> Path:
    # The trusted side's own temporary folder: the sandbox has a fresh /tmp and is never bound this one.
    return Path(tempfile.mkdtemp(prefix="kfoundry-ncu-"))


async def collect(rt: Runtime, device: str, backend: Backend, reference: str, candidate: str, timeout_s: float, run: Run) -> tuple[list[KernelCounters], str]:
    """Counters per kernel of one candidate forward call, and a status ('collected' or 'unavailable: ...')."""
    ncu, why = usable_ncu(device)
    if why:
        return [], f"unavailable: {why}"
    await rt.progress(0.85, "collecting hardware counters with Nsight Compute")
    folder = _scratch()
    try:
        got = await _under_ncu(rt, device, backend, reference, candidate, "strict", timeout_s, run, ncu_command(ncu, folder / NCU_LOG), folder / NCU_LOG, "ncu")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if got.failure:
        return [], f"unavailable: {got.failure}"
    parsed = parse_ncu_csv(got.text)
    if parsed is None or not parsed.kernels:
        return [], "unavailable: ncu collected no kernel counters"
    return kernel_counters(parsed), "collected"


async def attribute(rt: Runtime, device: str, backend: Backend, reference: str, candidate: str, precision: str, timeout_s: float,
                    run: Run, library: frozenset[str], allowed: frozenset[str]) -> DeviceAttribution:
    """Where one judged candidate call's device time went, as ncu recorded it from outside the sandbox.

    ``library``: name keys of kernels the reference itself launched (never the candidate's own);
    ``allowed``: name keys of library kernels the caller allows (``allow_torch_ops``).
    """
    ncu, why = usable_ncu(device)
    if why:
        return DeviceAttribution(status=AttributionStatus.unavailable, reason=why)
    await rt.progress(0.9, "recording the candidate's kernels with Nsight Compute")
    folder = _scratch()
    log = folder / "ncu-times.csv"
    try:
        got = await _under_ncu(rt, device, backend, reference, candidate, precision, timeout_s, run, times_command(ncu, log), log, "attribution")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if got.failure:
        return DeviceAttribution(status=AttributionStatus.failed, reason=got.failure)
    if not got.correct:
        # A candidate that computes the wrong result while watched must not have that call's kernels judged.
        return DeviceAttribution(status=AttributionStatus.failed, reason="the candidate's calls under Nsight Compute were not all correct")
    return device_attribution(got.text, library, allowed)


def device_attribution(text: str, library: frozenset[str], allowed: frozenset[str]) -> DeviceAttribution:
    """Judge an ncu kernel-time report: a kernel is the candidate's own unless it is library or framework code."""
    parsed = parse_ncu_csv(text)
    if parsed is None or not parsed.kernels:
        return DeviceAttribution(status=AttributionStatus.failed, reason="Nsight Compute recorded no kernel in the call")
    launches = sum(int(m.get("launches", 1)) for m in parsed.kernels.values())
    if launches >= MAX_LAUNCHES:
        return DeviceAttribution(status=AttributionStatus.failed, launches=launches,
                                 reason=f"the call launched {launches} kernels or more; only the first {MAX_LAUNCHES} are recorded")
    rows = [(name, m.get("duration_us", 0.0), int(m.get("launches", 1))) for name, m in parsed.kernels.items()]
    kept: list[KernelShare] = shares(
        rows, calls=1, is_own=lambda name: not is_library_kernel(name, library),
        is_allowed=lambda name: name_key(name) in allowed,
    )
    own = round(sum(k.share for k in kept if k.own or k.allowed), 4)
    return DeviceAttribution(status=AttributionStatus.measured, own_share=own, kernel_ms=round(sum(r[1] for r in rows) / 1e3, 6),
                             launches=launches, kernels=kept[:32])
