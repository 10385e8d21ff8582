"""Nsight Compute counters for a candidate: a fresh worker started under ``ncu``."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
from pathlib import Path

from kfoundry.artifacts import Run
from kfoundry.backends.base import Backend
from kfoundry.profilers.textparse import kernel_counters, parse_ncu_csv
from kfoundry.runner.process import WorkerGone
from kfoundry.runner.session import Ending, Plan, Session
from kfoundry.schema import KernelCounters
from kfoundry.tools.runtime import Runtime

SECTIONS = ("SpeedOfLight", "Occupancy", "MemoryWorkloadAnalysis", "LaunchStats")
MAX_KERNELS = 64
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


def ncu_command(ncu: str) -> list[str]:
    sections = [arg for name in SECTIONS for arg in ("--section", name)]
    return [
        ncu, "--csv", "--page", "details", "--profile-from-start", "off", "--target-processes", "all",
        "--clock-control", "none", "--launch-count", str(MAX_KERNELS), *sections, "--log-file", "{dir}/" + NCU_LOG,
    ]


async def collect(rt: Runtime, device: str, backend: Backend, reference: str, candidate: str, timeout_s: float, run: Run) -> tuple[list[KernelCounters], str]:
    """Counters per kernel of one candidate forward call, and a status ('collected' or 'unavailable: ...')."""
    if not device.startswith("cuda"):
        return [], "unavailable: Nsight Compute needs an NVIDIA GPU; this job ran on the CPU"
    ncu = find_ncu()
    if ncu is None:
        return [], "unavailable: ncu (Nsight Compute) is not installed or not on PATH"
    await rt.progress(0.85, "collecting hardware counters with Nsight Compute")
    try:
        worker = await rt.pool.acquire(device, wrapper=ncu_command(ncu))
    except WorkerGone as exc:
        return [], f"unavailable: Nsight Compute did not start the worker: {str(exc)[:500]}"
    ref_worker = await rt.pool.acquire(device)
    keep = run.path / "ncu-worker"
    try:
        # Three calls; the last runs inside the profiler range (the first two take JIT and autotuning).
        session = Session(backend=backend.name, device=device, precision="strict", problem=reference, candidate=candidate,
                          reference_worker=ref_worker, candidate_worker=worker, profiled_from=2)
        plan = Plan(trials=[(secrets.randbits(31), "standard") for _ in range(3)])
        # The session waits for ncu to write its report (it does when the profiled process exits) before it ends.
        report = await session.run(plan, timeout_s)
        log = Path(worker.dir) / NCU_LOG
        text = log.read_text(errors="replace") if log.is_file() else ""
        stderr = worker.log_tail("stderr", 2000) + worker.log_tail("stdout", 2000)
    finally:
        await rt.pool.release(worker, keep)
        await rt.pool.release(ref_worker, run.path / "ncu-reference-worker")
    if text:
        run.write("ncu.csv", text)
    if report.ending is not Ending.done:
        message = report.error.message if report.error else report.ending.value
        return [], f"unavailable: the counters job failed ({message})"
    parsed = parse_ncu_csv(text) if text else None
    if parsed is None or not parsed.kernels:
        hint = " ".join(line for line in stderr.splitlines() if "ERR" in line or "error" in line.lower())[:400]
        return [], f"unavailable: ncu collected no kernel counters{': ' + hint if hint else ''}"
    return kernel_counters(parsed), "collected"
