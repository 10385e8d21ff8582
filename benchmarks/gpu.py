"""GPU figures: MCP round trips, timing stability, agreement with triton's do_bench, example speedups.

    python benchmarks/gpu.py [--json out.json] [--skip-examples | --examples-only] [--backends triton,cuda,helion]

(a) warm compile+verify+profile round trip through a stdio MCP server, Triton and CUDA (NVRTC);
(b) five repeated profiles of one candidate: CoV of the medians;
(c) our timing median vs ``triton.testing.do_bench`` on the same callable;
(d) every bundled problem's solution for each of --backends at its GPU size (``reference_gpu``) vs eager and
    torch.compile, with % of speed of light and the cold ``compile`` call's time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from kfoundry import examples


def _server() -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if k.startswith(("KFOUNDRY_", "TRITON_", "CUDA_", "PYTHON", "NCCL_", "TORCH_")) or k in ("PATH", "HOME", "LD_LIBRARY_PATH")}
    return StdioServerParameters(command=sys.executable, args=["-m", "kfoundry.cli", "serve"], env=env)


async def _call(client: Client, tool: str, args: dict[str, Any]) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    result = await client.call_tool(tool, args, read_timeout_seconds=900)
    seconds = time.perf_counter() - start
    if result.is_error:
        raise RuntimeError(f"{tool}: {' '.join(getattr(c, 'text', '') for c in result.content)}")
    return result.structured_content or {}, seconds


async def round_trip(client: Client, backend: str, problem: str) -> dict[str, float]:
    reference, candidate = examples.source(problem), examples.source(problem, backend)
    times: dict[str, float] = {}
    for tool, args in (
        ("compile", {"backend": backend, "candidate": candidate}),
        ("verify", {"backend": backend, "reference": reference, "candidate": candidate}),
        ("profile", {"backend": backend, "reference": reference, "candidate": candidate, "baselines": ["eager"]}),
    ):
        data, times[tool] = await _call(client, tool, args)
        assert data["state"] in ("compiled", "correct"), data
    times["total"] = sum(times.values())
    return {k: round(v, 3) for k, v in times.items()}


async def mcp_figures(skip_examples: bool, examples_only: bool, backends: list[str], figures: dict[str, Any], save: Any) -> dict[str, Any]:
    start = time.perf_counter()
    async with Client(_server()) as client:
        await _call(client, "backends", {})
        figures["server_cold_start_s"] = round(time.perf_counter() - start, 3)
        if not examples_only:
            for backend in ("triton", "cuda"):
                await round_trip(client, backend, "elementwise")  # warm-up: builds cached, spares up
                runs = [await round_trip(client, backend, "elementwise") for _ in range(3)]
                figures[f"a_round_trip_{backend}"] = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
                save()

            reference, candidate = examples.source("matmul_epilogue"), examples.source("matmul_epilogue", "triton")
            medians = []
            for _ in range(5):
                data, _ = await _call(client, "profile", {"backend": "triton", "reference": reference, "candidate": candidate, "baselines": ["eager"], "reps": 100})
                medians.append(data["candidate"]["median_ms"])
            mean = statistics.mean(medians)
            figures["b_repeat_profiles"] = {"medians_ms": medians, "cov_of_median": round(statistics.stdev(medians) / mean, 5)}
            save()

        if not skip_examples:
            rows = []
            for info in examples.problems():
                problem = info.name
                reference = examples.source(problem, examples.REFERENCE_GPU if info.gpu_size else examples.REFERENCE)
                for backend in [b for b in backends if b in info.solutions]:
                    candidate = examples.source(problem, backend)
                    try:
                        built, compile_s = await _call(client, "compile", {"backend": backend, "candidate": candidate})
                        data, seconds = await _call(client, "profile", {
                            "backend": backend, "reference": reference, "candidate": candidate,
                            "baselines": ["eager", "compile"], "reps": 50,
                        })
                    except RuntimeError as exc:  # one backend's failure is a row of the table, not the end of it
                        rows.append({"problem": problem, "backend": backend, "state": "error", "error": str(exc)[:600]})
                        figures["d_examples"] = rows
                        save()
                        continue
                    rows.append({
                        "problem": problem, "size": "reference_gpu" if info.gpu_size else "reference", "backend": backend,
                        "state": data["state"], "compile_state": built.get("state"), "compile_s": round(compile_s, 2),
                        "candidate_ms": (data.get("candidate") or {}).get("median_ms"),
                        "eager_ms": (data.get("eager") or {}).get("median_ms"),
                        "compile_ms": (data.get("compiled") or {}).get("median_ms"),
                        "speedup_vs_eager": data.get("speedup_vs_eager"), "speedup_vs_compile": data.get("speedup_vs_compile"),
                        "sol_ms": data.get("sol_ms"), "sol_fraction": data.get("sol_fraction"), "seconds": round(seconds, 2),
                        "warnings": data.get("warnings", [])[:2],
                    })
                    figures["d_examples"] = rows
                    save()
    return figures


def do_bench_agreement() -> dict[str, Any]:
    """Our interleaved timer and triton's do_bench on the same callable, in this process."""
    import torch
    import triton.testing

    from kfoundry.profilers.timing import bench, cache_flusher, input_sets

    out: dict[str, Any] = {}
    for problem in ("matmul_epilogue", "softmax", "layernorm"):
        ref_mod = _load(examples.path(problem, "reference"))
        cand_mod = _load(examples.path(problem, "triton"))
        torch.manual_seed(0)
        model = cand_mod.ModelNew(*ref_mod.get_init_inputs()).cuda()
        with torch.no_grad():
            sets = input_sets(lambda: [t.cuda() if hasattr(t, "cuda") else t for t in ref_mod.get_inputs()], count=8)
            ours = bench({"c": lambda a: model(*a)}, sets, warmup=10, reps=200, flush=cache_flusher("cuda:0"), device="cuda:0")["c"]
            fixed = sets[0]
            theirs = triton.testing.do_bench(lambda: model(*fixed), warmup=25, rep=200, return_mode="median")
        ours_median = statistics.median(ours)
        out[problem] = {"ours_ms": round(ours_median, 5), "do_bench_ms": round(theirs, 5), "ratio": round(ours_median / theirs, 4)}
    return out


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{path.parent.name}_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip-examples", action="store_true")
    parser.add_argument("--examples-only", action="store_true", help="only (d): skip the round trips, repeats and do_bench")
    parser.add_argument("--backends", default="triton,cuda", help="comma-separated backends for (d)")
    args = parser.parse_args()
    os.environ.setdefault("KFOUNDRY_HOME", tempfile.mkdtemp(prefix="kfoundry-bench-"))
    figures: dict[str, Any] = {}

    def save() -> None:
        # written after every section, so a run cut short still leaves what it measured
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))

    if not args.examples_only:
        figures["c_do_bench"] = do_bench_agreement()
        save()
    anyio.run(mcp_figures, args.skip_examples, args.examples_only, args.backends.split(","), figures, save)
    sys.stdout.write(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
