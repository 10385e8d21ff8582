"""``kfoundry demo``: a real MCP client drives a real ``kfoundry serve`` over stdio.

It runs all five tools on a bundled problem with the best backend on this host and
prints one compact table row per call.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from kfoundry import examples

_ROW = "{:<22} {:<20} {:>8}  {}"


def _write(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _call(client: Client, label: str, tool: str, arguments: dict[str, Any], summary: Any) -> dict[str, Any]:
    start = time.perf_counter()
    result = await client.call_tool(tool, arguments, read_timeout_seconds=900)
    seconds = time.perf_counter() - start
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        _write(_ROW.format(label, "ERROR", f"{seconds:.2f}s", text[:100]))
        raise RuntimeError(f"{tool} failed: {text}")
    data = result.structured_content or {}
    state = str(data.get("state", data.get("bottleneck", "ok")))
    _write(_ROW.format(label, state, f"{seconds:.2f}s", summary(data)))
    return data


def _timing(data: dict[str, Any]) -> str:
    cand, eager, comp = data.get("candidate"), data.get("eager"), data.get("compiled")
    parts = []
    if cand:
        parts.append(f"{cand['median_ms']:.3f} ms (cov {cand['cov']:.0%})")
    if eager:
        parts.append(f"eager {eager['median_ms']:.3f} ms x{data.get('speedup_vs_eager') or 0:.2f}")
    if comp:
        parts.append(f"compile {comp['median_ms']:.3f} ms x{data.get('speedup_vs_compile') or 0:.2f}")
    if data.get("sol_fraction") is not None:
        parts.append(f"{data['sol_fraction']:.0%} of SOL")
    return ", ".join(parts) or str(data.get("error", {}).get("message", ""))[:80]


async def _demo(problem: str, backend: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k.startswith(("KFOUNDRY_", "TRITON_", "CUDA_")) or k in ("PATH", "HOME")}
    params = StdioServerParameters(command=sys.executable, args=["-m", "kfoundry.cli", "serve"], env=env)
    reference = examples.source(problem, "reference")
    start = time.perf_counter()
    async with Client(params) as client:
        _write(f"kernel-foundry demo: server {client.server_info.name} {client.server_info.version} over stdio, protocol {client.protocol_version}")
        _write(f"connected in {time.perf_counter() - start:.2f}s; problem: {problem}")
        _write("")
        _write(_ROW.format("call", "state", "time", "result"))
        _write("-" * 100)
        info = await _call(client, "backends", "backends", {}, lambda d: "available: " + ", ".join(b["name"] + (" (interpreted)" if b.get("interpreted") else "") for b in d["backends"] if b["available"]) + f"; best: {d['best']}")
        chosen = backend or info["best"]
        available = {b["name"] for b in info["backends"] if b["available"]}
        if chosen not in available:
            raise RuntimeError(f"backend {chosen} is not available here")
        solution = examples.source(problem, chosen)
        device = next((b.get("device", "") for b in info["backends"] if b["name"] == chosen), "")
        if device.startswith("cuda") and examples.path(problem).with_name(f"{examples.REFERENCE_GPU}.py").is_file():
            # On a GPU the CPU-sized problem is launch-bound: timing it would show launch latency, not the kernel.
            reference = examples.source(problem, examples.REFERENCE_GPU)
            _write(f"on {device}: the problem at its GPU size ({examples.REFERENCE_GPU}.py)")
        broken = solution.replace("def forward", "def forward_unused", 1)
        await _call(client, "translate_reference", "translate_reference", {"reference": reference, "target_backend": chosen},
                    lambda d: f"prompt {len(d['prompt'])} chars; {(d.get('analysis') or {}).get('flops', 0):.3g} FLOPs, {(d.get('analysis') or {}).get('bytes', 0):.3g} bytes")
        await _call(client, "compile", "compile", {"backend": chosen, "candidate": solution},
                    lambda d: ", ".join(f"{k['name']}" + (f" {k['build_s']}s" if k.get("build_s") is not None else "") for k in d.get("kernels", []))[:80])
        await _call(client, "verify (broken)", "verify", {"backend": chosen, "reference": reference, "candidate": broken},
                    lambda d: (d.get("error") or {}).get("type", "") + ": " + str((d.get("error") or {}).get("message", d.get("mismatch")))[:70])
        await _call(client, "verify", "verify", {"backend": chosen, "reference": reference, "candidate": solution},
                    lambda d: f"{d['trials_passed']}/{d['trials']} trials, atol={d.get('atol')} rtol={d.get('rtol')}")
        prof = await _call(client, "profile", "profile", {"backend": chosen, "reference": reference, "candidate": solution}, _timing)
        await _call(client, "analyze_profile", "analyze_profile", {"profile": prof["run_id"], "candidate": solution},
                    lambda d: d["recommendation"][:90])
    _write("-" * 100)
    _write(f"all five tools answered over MCP in {time.perf_counter() - start:.1f}s; artifacts under kfoundry://runs/{prof['run_id']}/")
    return 0


def run_demo(problem: str = "softmax", backend: str | None = None) -> int:
    return anyio.run(_demo, problem, backend)
