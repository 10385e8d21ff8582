"""Precision policies on one GEMM + epilogue problem: errors against the float64 oracle and labelled speedups.

    python benchmarks/precision.py [--json out.json] [--reps 30]

For each policy (strict, tf32, bf16) the Triton candidate written for it is profiled under
that policy (and the compensated tf32x3 candidate under strict) with eager and torch.compile baselines; the table shows the candidate's RMS
error against the float64 oracle, the honest error at that precision, and the speedups
against the same-policy and the strict baselines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "gpu"))
from precision_cases import CANDIDATES, REFERENCE  # noqa: E402

from kfoundry.server.app import build_server  # noqa: E402


async def _profile(client: Client, candidate: str, policy: str, reps: int) -> dict[str, Any]:
    arguments = {"backend": "triton", "reference": REFERENCE, "candidate": CANDIDATES[candidate], "precision": policy,
                 "trials": 2, "reps": reps, "warmup": 3, "baselines": ["eager", "compile"]}
    result = await client.call_tool("profile", arguments, read_timeout_seconds=900)
    if result.is_error:
        raise RuntimeError(" ".join(getattr(c, "text", "") for c in result.content))
    return result.structured_content or {}


def _row(candidate: str, policy: str, data: dict[str, Any]) -> dict[str, Any]:
    check = (data.get("verify") or {}).get("precision_checks", [{}])[0]
    speed = {(s["baseline"], s["precision"]): s["speedup"] for s in data.get("speedups", [])}
    return {
        "candidate": candidate, "policy": policy, "state": data["state"], "candidate_ms": (data.get("candidate") or {}).get("median_ms"),
        "candidate_error": check.get("candidate_error"), "honest_error": check.get("honest_error"), "bound": check.get("bound"),
        "vs_eager_same": speed.get(("eager", policy)), "vs_compile_same": speed.get(("compile", policy)),
        "vs_eager_strict": speed.get(("eager", "strict")), "vs_compile_strict": speed.get(("compile", "strict")),
        "sol_fraction": data.get("sol_fraction"), "own_kernel_share": data.get("own_kernel_share"),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


async def main(reps: int) -> list[dict[str, Any]]:
    rows = []
    async with Client(build_server()) as client:
        # tf32x3 is the compensated GEMM judged under strict: three TF32 products that keep fp32's error
        for candidate, policy in (("strict", "strict"), ("tf32x3", "strict"), ("tf32", "tf32"), ("bf16", "bf16")):
            rows.append(_row(candidate, policy, await _profile(client, candidate, policy, reps)))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    table = anyio.run(main, args.reps)
    columns = list(table[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in table]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
