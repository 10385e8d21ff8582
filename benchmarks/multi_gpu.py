"""Scheduler proof on a multi-GPU host: N concurrent profile jobs on N GPUs vs one job alone.

    python benchmarks/multi_gpu.py [--json out.json]

Reports the wall time of one profile job on an idle server, of N jobs submitted together
(one per GPU: the scheduler spreads them), the ratio, and how far the candidate medians
measured under that load are from the idle ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from kfoundry import examples

PROBLEM, BACKEND = "matmul_epilogue", "triton"


async def _profile(client: Client) -> tuple[float, dict[str, Any]]:
    args = {"backend": BACKEND, "reference": examples.source(PROBLEM), "candidate": examples.source(PROBLEM, BACKEND), "baselines": ["eager"], "reps": 200}
    start = time.perf_counter()
    result = await client.call_tool("profile", args, read_timeout_seconds=900)
    seconds = time.perf_counter() - start
    assert not result.is_error and result.structured_content and result.structured_content["state"] == "correct", result
    return seconds, result.structured_content


async def run() -> dict[str, Any]:
    import torch

    from kfoundry.server.app import build_server

    gpus = torch.cuda.device_count()
    async with Client(build_server()) as client:
        for _ in range(gpus):  # warm every GPU's caches and spares
            await _profile(client)
        idle = [await _profile(client) for _ in range(3)]
        single_s = statistics.median(s for s, _ in idle)
        idle_median = statistics.median(d["candidate"]["median_ms"] for _, d in idle)
        loaded: list[tuple[float, dict[str, Any]]] = []
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(gpus):
                async def one() -> None:
                    loaded.append(await _profile(client))
                tg.start_soon(one)
        together_s = time.perf_counter() - start
    devices = sorted(d["device"] for _, d in loaded)
    medians = [d["candidate"]["median_ms"] for _, d in loaded]
    return {
        "gpus": gpus, "devices_used": devices, "single_job_s": round(single_s, 3), "concurrent_jobs_s": round(together_s, 3),
        "ratio": round(together_s / single_s, 4), "idle_median_ms": idle_median, "loaded_medians_ms": medians,
        "max_deviation": round(max(abs(m - idle_median) / idle_median for m in medians), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("KFOUNDRY_HOME", tempfile.mkdtemp(prefix="kfoundry-mgpu-"))
    figures = anyio.run(run)
    text = json.dumps(figures, indent=2)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
