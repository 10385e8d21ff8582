"""Foundation figures: server cold start, C++ build times, MCP round trips.

    python benchmarks/foundation.py [--repeat 3] [--json out.json]

Each figure is measured end to end the way a user meets it: the server is a real
``kfoundry serve`` subprocess driven over stdio by a real MCP client.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from kfoundry import examples

KERNEL = r"""
#include <cstdint>
extern "C" void scale_add(const float* x, const float* y, float* out, float a, int64_t n) {
  #pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) out[i] = a * x[i] + y[i];
}
"""

LOAD_INLINE = r"""
#include <torch/extension.h>
torch::Tensor scale_add(torch::Tensor x, torch::Tensor y, double a) {
  auto out = torch::empty_like(x);
  auto* px = x.data_ptr<float>(); auto* py = y.data_ptr<float>(); auto* po = out.data_ptr<float>();
  int64_t n = x.numel();
  #pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) po[i] = a * px[i] + py[i];
  return out;
}
"""


def _ms(seconds: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(seconds), 4), "min_s": round(min(seconds), 4), "n": len(seconds)}


def cpp_builds(repeat: int) -> dict[str, Any]:
    from kfoundry.backends.gxx import build

    cold, cached = [], []
    for _ in range(repeat):
        source = KERNEL + f"// {uuid.uuid4().hex}\n"  # a new hash each time: a true cold build
        start = time.perf_counter()
        outcome = build(source)
        cold.append(time.perf_counter() - start)
        assert outcome.ok, outcome.log
        start = time.perf_counter()
        again = build(source)
        cached.append(time.perf_counter() - start)
        assert again.cached
    return {"cpp_build_cold": _ms(cold), "cpp_build_cached": _ms(cached)}


def load_inline_builds() -> dict[str, Any]:
    from torch.utils.cpp_extension import load_inline

    name = f"bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as build_dir:
        start = time.perf_counter()
        load_inline(name, cpp_sources=[LOAD_INLINE], functions=["scale_add"], extra_cflags=["-O3", "-fopenmp"], build_directory=build_dir)
        cold = time.perf_counter() - start
    return {"load_inline_build_cold": {"median_s": round(cold, 3), "n": 1}}


def _server() -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if k.startswith(("KFOUNDRY_", "TRITON_", "CUDA_")) or k in ("PATH", "HOME")}
    return StdioServerParameters(command=sys.executable, args=["-m", "kfoundry.cli", "serve"], env=env)


async def _round_trip(client: Client, backend: str, problem: str) -> dict[str, float]:
    reference = examples.source(problem, "reference")
    candidate = examples.source(problem, backend)
    times: dict[str, float] = {}
    for tool, args in (
        ("compile", {"backend": backend, "candidate": candidate}),
        ("verify", {"backend": backend, "reference": reference, "candidate": candidate}),
        ("profile", {"backend": backend, "reference": reference, "candidate": candidate, "baselines": ["eager"], "reps": 10}),
    ):
        start = time.perf_counter()
        result = await client.call_tool(tool, args, read_timeout_seconds=900)
        times[tool] = time.perf_counter() - start
        assert not result.is_error and result.structured_content["state"] in ("compiled", "correct"), result
    times["total"] = sum(times.values())
    return times


async def mcp_figures(repeat: int) -> dict[str, Any]:
    start = time.perf_counter()
    async with Client(_server()) as client:
        await client.call_tool("backends", {})
        cold_start = time.perf_counter() - start
        await _round_trip(client, "cpp", "elementwise")  # warm: spares up, build cached, peaks measured
        figures: dict[str, Any] = {"server_cold_start_s": round(cold_start, 3)}
        for backend in ("cpp", "triton"):
            runs = [await _round_trip(client, backend, "elementwise") for _ in range(repeat)]
            figures[f"round_trip_{backend}"] = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip-load-inline", action="store_true")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    figures.update(cpp_builds(max(args.repeat, 5)))
    if not args.skip_load_inline:
        figures.update(load_inline_builds())
    figures.update(anyio.run(mcp_figures, args.repeat))
    text = json.dumps(figures, indent=2)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
